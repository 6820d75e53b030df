"""The kernel layer: the one place the tree talks to netlink, namespaces and blocking kernel calls."""
