"""The offline CoreOS-compatible lab box for libvirt: recipe, build steps, and the cloud-config agent.

``agent.py`` is shipped into the image as ``/usr/bin/coreos-cloudinit`` and must stay stdlib + PyYAML only.
"""
