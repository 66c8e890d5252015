"""Running units on the cluster: a backend protocol (:mod:`.base`), its two backends, what they return.

:mod:`.base` (UnitBackend, get_backend), :mod:`.systemd_backend` (our scheduler, etcd, systemd over SSH),
:mod:`.fleet_backend` (fleet's API), :mod:`.launch` (what happens on one node), :mod:`.observe` (reading the
units' live state), :mod:`.results` (the frozen answers).
"""
