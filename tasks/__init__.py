"""Task streams, one file each; installed as ``plastibench.tasks``.

Add a task by adding a file here that defines a :class:`plastibench.task.Task` subclass decorated
with ``@register_task("name")``, with its ``paper``, ``short`` and ``smoke`` protocols.
"""
