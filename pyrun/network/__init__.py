"""Networking for containers: named network namespaces, interfaces,
addresses, routes and sysctls over rtnetlink (pyroute2), and CNI.

Modules: netns (create, delete, enter), links (veth, bridge, macvlan,
ipvlan, vlan; up/down, MTU, MAC, name, namespace), address, route, sysctl,
rtnl (the pyroute2 edge), and the cni package (CNI spec 1.0.0: run plugin
chains from a conflist, cache results for DEL).
"""
