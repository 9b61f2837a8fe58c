"""One module per resource kind: its canonical form, how to read it from facts, how to change it.

Every module offers the same three functions over a
:class:`~provisioner.resources.base.HostContext`:

* ``desired(ctx)``: the resources the manifests ask for on this host;
* ``live(ctx)``: the resources the gathered facts show, in the managed scope only;
* ``operations(change, resource, ctx)``: the contract operations that carry out one change.

Two kinds differ, for a reason: ``line_assignment`` turns all of a host's changes into one
``tsecimp`` import (``batch_operations``), and ``users_group`` is carried out over LDAP, not on a
host (``pairs``). ``services`` holds the two Windows services, Telephony and the CTI engine.

They know nothing about transports: facts come in as contract models, operations go out as them.
"""
