"""Add LDIF from stdin to a Samba DC's database in a few large transactions (bulk seeding).

Run by Samba's own interpreter (its Python bindings exist for nothing else), never imported::

    /usr/bin/python3 -I samba_import.py <targetdir>/etc/smb.conf < entries.ldif

Adding users one LDAP request at a time costs Samba a sub-transaction each, whose index merge
grows with the number of objects of the class (10,000 users: minutes). ldb's batch mode drops
the sub-transactions, so each transaction of up to ``CHUNK`` entries is added in one go; an
error cancels the transaction it happens in and ends the import. Entries whose DN exists
already, and changes that add only values that are there, are skipped, so a lab may seed a DC
it shares with tests. Prints ``added N, skipped M of T`` after each transaction.
"""

import sys

import ldb  # type: ignore[import-not-found]
import samba.param  # type: ignore[import-not-found]
from samba.auth import system_session  # type: ignore[import-not-found]
from samba.samdb import SamDB  # type: ignore[import-not-found]

CHUNK = 2000  # entries per transaction: larger ones cost more per entry, smaller ones commits


def main() -> None:
    settings = samba.param.LoadParm()
    settings.load(sys.argv[1])
    db = SamDB(
        url=settings.samdb_url(),
        session_info=system_session(),
        lp=settings,
        flags=ldb.FLG_DONT_CREATE_DB | ldb.FLG_NOSYNC,  # a lab DC: thrown away when it stops
        options=["batch_mode:1"],
    )
    entries = list(db.parse_ldif(sys.stdin.read()))
    existing = {
        str(found.dn).lower()
        for found in db.search(db.domain_dn(), ldb.SCOPE_SUBTREE, "(objectClass=*)", ["1.1"])
    }
    added = skipped = 0
    for start in range(0, len(entries), CHUNK):
        db.transaction_start()
        try:
            for change, message in entries[start : start + CHUNK]:
                if change == ldb.CHANGETYPE_MODIFY:
                    if _already_added(db, message):
                        skipped += 1
                        continue
                    db.modify(message)
                elif str(message.dn).lower() in existing:
                    skipped += 1
                    continue
                else:
                    db.add(message)
                added += 1
            db.transaction_commit()
        except BaseException:
            db.transaction_cancel()
            raise
        print(f"added {added}, skipped {skipped} of {len(entries)}", flush=True)


def _already_added(db: SamDB, message: ldb.Message) -> bool:
    """Whether every value this change adds is there already (a member added before)."""
    names = [name for name in message if name != "dn"]
    [current] = db.search(message.dn, ldb.SCOPE_BASE, attrs=names)
    for name in names:
        have = {str(value).lower() for value in current.get(name, [])}
        if any(str(value).lower() not in have for value in message[name]):
            return False
    return True


if __name__ == "__main__":
    main()
