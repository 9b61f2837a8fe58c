"""Active Directory: what the plan knows (``model``, no I/O), how it is read (``facts``,
``reader``, over LDAP) and how group membership is changed (``operations``)."""
