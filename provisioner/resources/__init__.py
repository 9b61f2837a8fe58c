"""One module per resource kind: its canonical form, how to read it from facts, how to change it.

Every module offers the same three functions over a
:class:`~provisioner.resources.base.HostContext`:

* ``desired(ctx)``: the resources the manifests ask for on this host;
* ``live(ctx)``: the resources the gathered facts show, in the managed scope only;
* ``operations(change, ctx)``: the contract operations that carry out one change.

They know nothing about transports: facts come in as contract models, operations go out as them.
"""
