"""Plasticity methods, one file each; installed as ``plastibench.methods``.

Add a method by adding a file here that defines a :class:`plastibench.method.Method` subclass
decorated with ``@register_method("name")``; it is discovered automatically.
"""

# Compositions (``cbp+l2``) come with the methods: importing compose lets METHODS.get build them.
from plastibench import compose as _compose  # noqa: F401
