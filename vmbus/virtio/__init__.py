"""virtio building blocks for the vhost-user vsock backend, sans-IO: guest memory with
bounds-checked access, split virtqueues, the virtio-vsock packet header."""
