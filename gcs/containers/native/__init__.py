"""The native runtime: creates container processes itself (fork, namespaces, pivot_root)."""
