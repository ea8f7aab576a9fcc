"""The kernel: settings, ids, reason codes, the message contract, acks, topology, logs.

It imports nothing else of Fairway; everything else may import it.
"""
