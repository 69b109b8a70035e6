"""Contracts every process imports: settings, event and message shapes, stream names, errors.

This package does no I/O.
"""
