"""The platform's entry points, above the services: the ``vr1`` command line, the embedded
runner that wires every service's task handlers into one process (``bootstrap``), and
the demo.  Nothing in ``services/`` or ``shared/`` imports this package.
"""
