# Generated from coreos-lab.toml by `coreos-lab render`: edit coreos-lab.toml and re-render, not this file.
#
# coreos-vagrant's config.rb variables, read by the Vagrantfile beside this file.

# Size of the cluster created by Vagrant
$num_instances = 3

# Change basename of the VM
$instance_name_prefix = "core"

# Official Flatcar channel: stable, beta, alpha, lts
$update_channel = "stable"

# Box version ("current" = the newest the box URL offers)
$image_version = "current"

# Log the serial consoles of the VMs to log/
$enable_serial_logging = false

# Share your home directory with the VMs over NFS
$share_home = false

# Customize VMs
$vm_gui = false
$vm_memory = 1024
$vm_cpus = 1
$vb_cpuexecutioncap = 100

# Share additional folders with the VMs over NFS: host path => guest path
$shared_folders = {}

# Forward guest ports to the host: guest port => host port
$forwarded_ports = {}

# Forward the Docker TCP port (2375) of node i to 127.0.0.1:($expose_docker_tcp + i - 1), nil = off
$expose_docker_tcp = nil

# coreos-lab: target OS dialect, provider tried first, private network (node i gets host address 100+i)
$lab_os = "flatcar"
$lab_provider = "virtualbox"
$lab_network = "192.168.56.0/24"

# coreos-lab: box override (nil = the OS's box for $update_channel, fetched from its box URL)
$box = nil
$box_url = nil
