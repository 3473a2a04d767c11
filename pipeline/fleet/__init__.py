"""The camera fleet: cameras as desired state in Redis, nodes that share them by rendezvous hashing, leases with
fencing tokens so that a camera never has two writers.

``keys`` (key names), ``hrw`` (the pure assignment), ``registry`` (the desired cameras), ``leases`` (ownership,
as Lua scripts), ``nodes`` (live nodes and their capacity), ``status`` (what ``cameras list`` and the view show),
``node`` (``dptstream node``: one pipeline whose sources follow the node's share)."""
