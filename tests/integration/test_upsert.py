"""replace1 overwrites a row by its primary key on every backend (DataJoint's replace=True fails on PostgreSQL)."""
import datajoint as dj

from schemas.server.sql import replace1


def test_replace1_inserts_then_overwrites_the_row_with_the_same_key(db_prefix):
    scratch = dj.Schema(db_prefix + "upsert")

    @scratch
    class Note(dj.Manual):
        definition = """
        note_id : int32
        ---
        text : varchar(32)
        values : <blob>
        """

    replace1(Note, {"note_id": 1, "text": "first", "values": [1.0]})
    replace1(Note, {"note_id": 2, "text": "other", "values": []})
    replace1(Note, {"note_id": 1, "text": "second", "values": [2.0, 3.0]})
    with Note.connection.transaction:  # inside an open transaction it joins that one
        replace1(Note, {"note_id": 2, "text": "third", "values": [4.0]})
    rows = Note.to_dicts(order_by="note_id")
    assert [(r["note_id"], r["text"], list(r["values"])) for r in rows] == [(1, "second", [2.0, 3.0]), (2, "third", [4.0])]
