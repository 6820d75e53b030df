"""The shared contract at the bottom of the tree: what the master and every node agree on.

``view`` (the versioned cluster view and its types), ``tasks`` (task states), ``vip_labels``
(VIP label parsing, DNS names and the one clash checker), ``addresses`` (pools and well-known
addresses) and ``ipam`` (overlay address allocation). Imports nothing else of the project.
"""
