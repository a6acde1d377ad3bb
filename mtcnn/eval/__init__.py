"""Measuring a detector: the official WIDER FACE protocol, landmark error and stage recall."""
