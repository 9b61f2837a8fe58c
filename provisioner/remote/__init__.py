"""The remote side: PowerShell scripts a Windows host runs, and the JSON contract they speak.

* :mod:`provisioner.remote.contract`: the versioned JSON documents (requests, facts, results);
* :mod:`provisioner.remote.scripts`: how a script and its data reach a host (a constant command
  line, script and JSON over stdin) and how its one JSON document is read back;
* :mod:`provisioner.remote.tsecimp`: the ``tsecimp /d`` listing and the ``tsecimp`` XML format.
"""
