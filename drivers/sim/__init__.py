"""Simulated hardware at the transport: serial bytes, I2C registers, DHT pulse trains.

Only the transport is replaced; the real driver and library code parses what these produce.
"""
