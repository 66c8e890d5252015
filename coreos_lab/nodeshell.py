"""Shell snippets that run on a node, written for what a Flatcar node has.

A Flatcar node has no Python and its ``hostname`` comes from net-tools, which has no ``-I`` (Debian's has);
iproute2's ``ip`` and a POSIX shell are there. The lab box refuses ``hostname -I`` the way net-tools does, so a
snippet that relies on it fails in our tests as it would on Flatcar.
"""

from __future__ import annotations

from typing import Final

# The node's global IPv4 addresses on one line, space-separated (what Debian's `hostname -I` prints): one
# process (`ip`), the rest shell builtins.
ADDRESSES: Final = (
    "ip -4 -o addr show scope global 2>/dev/null | while read -r _ _ _ a _; do printf '%s ' \"${a%/*}\"; done"
)

# Where the lab's cloud-config puts a node's placement metadata (``key=value`` lines), read by the probe.
METADATA_PATH: Final = "/etc/coreos-lab/metadata"
# fleetd's API socket on a node that runs fleet.
FLEET_SOCKET: Final = "/var/run/fleet.sock"

# Which channels provisioned the node: Ignition (its result file says a user config was given), cloud-config (the
# Vagrant box's user-data file is there), both (a lab root's config.ign beside cloud-config, as Flatcar's box
# allows) or none. One word. Debian's Ignition writes the result file 0600: a file that exists but cannot be
# read is read with `sudo -n` (never a password prompt); a node without one costs no sudo.
_RESULT: Final = "/etc/.ignition-result.json"
_PROVIDED: Final = "'\"userConfigProvided\": *true'"
PROVISIONED_BY: Final = (
    f"p=; if [ -r {_RESULT} ]; then grep -qs {_PROVIDED} {_RESULT} && p=ignition; "
    f"elif [ -e {_RESULT} ]; then sudo -n grep -qs {_PROVIDED} {_RESULT} 2>/dev/null && p=ignition; fi; "
    "if [ -e /var/lib/flatcar-vagrant/vagrantfile-user-data ] || [ -e /var/lib/coreos-vagrant/vagrantfile-user-data ]; "
    "then p=${p:+$p,}cloud-config; fi; echo ${p:-none}"
)
