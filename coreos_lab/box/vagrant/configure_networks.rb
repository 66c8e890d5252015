# -*- mode: ruby -*-
# Vagrant's CoreOS guest configures networks through NetworkManager unless it finds a `cloud-init` command.
# A Flatcar node has neither NetworkManager nor `cloud-init`, only coreos-cloudinit, so Flatcar's box (and this
# one, to match it) always takes the guest's cloud-config path: the network units and /etc/environment go to
# /var/tmp/networks.yml, applied by `systemctl start system-cloudinit@var-tmp-networks.yml.service`.

require Vagrant.source_root.join("plugins/guests/coreos/cap/configure_networks.rb").to_s

module VagrantPlugins
  module GuestCoreOS
    module Cap
      class ConfigureNetworks
        def self.configure_networks(machine, networks)
          configure_networks_cloud_init(machine, networks)
        end
      end
    end
  end
end
