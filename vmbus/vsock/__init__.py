"""virtio-vsock for the vhost-user backend: packets, connections, credit."""
