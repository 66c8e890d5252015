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

# Which channels provisioned the node: Ignition (its result file says a user config was given: Flatcar's Ignition
# and the lab box's write /etc/.ignition-result.json, 0644), cloud-config (the Vagrant box's user-data file is
# there), both (a lab root's config.ign beside cloud-config, as on Flatcar's box) or none. One word.
PROVISIONED_BY: Final = (
    "p=; grep -qs '\"userConfigProvided\": *true' /etc/.ignition-result.json && p=ignition; "
    "if [ -e /var/lib/flatcar-vagrant/vagrantfile-user-data ] || [ -e /var/lib/coreos-vagrant/vagrantfile-user-data ]; "
    "then p=${p:+$p,}cloud-config; fi; echo ${p:-none}"
)
