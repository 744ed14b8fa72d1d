"""Pony ORM, the peer reference: the same item table through Pony's unit of work.

Pony is the unit-of-work ORM a user could pick instead of SQLAlchemy when
flushes are slow, so the report shows it beside the sessions for the shapes
both can do (insert, update, delete, load).  Pony cannot share SQLAlchemy's
private in-memory SQLite connection, so it gets an in-memory database of its
own, filled and checked through Pony's connection; its PostgreSQL provider
needs psycopg2, which the benchmark does not install, so Pony runs on SQLite
only.  Pony binds an entity to one database once per process, hence one
``PonyPeer`` per process.
"""

from .database import item_row

try:
    from pony import orm as pony
except ImportError:  # the [bench] extra brings it
    pony = None

_peer = None


def available(db):
    return pony is not None and (db is None or db.name == "sqlite")


def peer():
    global _peer
    if _peer is None:
        _peer = PonyPeer()
    return _peer


class PonyPeer:
    def __init__(self):
        database = pony.Database()

        class Item(database.Entity):
            _table_ = "tsbench_item"
            id = pony.PrimaryKey(int, auto=True)
            name = pony.Required(str, 50)
            qty = pony.Required(int)

        database.bind(provider="sqlite", filename=":memory:")
        database.generate_mapping(create_tables=True)
        self.database = database
        self.Item = Item

    def _execute(self, sql, rows=None):
        with pony.db_session:
            connection = self.database.get_connection()
            cursor = connection.cursor()
            if rows is None:
                cursor.execute(sql)
            else:
                cursor.executemany(sql, rows)
            result = cursor.fetchall()
            pony.commit()
            return result

    def reset(self):
        """Empty the table; autoincrement ids start at 1 again (Pony declares
        its ids AUTOINCREMENT, whose counter lives in sqlite_sequence)."""
        self._execute("DELETE FROM tsbench_item")
        self._execute("DELETE FROM sqlite_sequence WHERE name = 'tsbench_item'")

    def fill_items(self, n):
        self.reset()
        rows = [tuple(item_row(i).values()) for i in range(n)]
        self._execute("INSERT INTO tsbench_item (id, name, qty) VALUES (?, ?, ?)", rows)

    def open_session(self, n, load):
        """The table filled with ``n`` items and a db_session left open for the
        timed step (which closes it), with the items loaded into it if ``load``."""
        self.fill_items(n)
        session = pony.db_session()
        session.__enter__()
        objects = pony.select(i for i in self.Item)[:] if load else None
        return session, objects

    def item_totals(self):
        (totals,) = self._execute(
            "SELECT count(*), coalesce(sum(qty), 0), coalesce(sum(id), 0) FROM tsbench_item"
        )
        return tuple(totals)

    def rows_with_qty_equal_to_id(self):
        ((count,),) = self._execute("SELECT count(*) FROM tsbench_item WHERE qty = id")
        return count
