"""The v1fabrik tables. Placeholder until the pipeline tables land (issue 6)."""
import datajoint as dj


class Placeholder(dj.Manual):
    definition = """
    # placeholder so the foundation can declare and drop a schema
    placeholder_id : int32
    ---
    note = "" : varchar(255)
    """


def bind(prefix: str) -> dict:
    """Declare the tables in the schema ``<prefix>fabrik``; returns {class name: bound class}."""
    schema = dj.Schema(f"{prefix}fabrik")
    schema(Placeholder)
    return {"Placeholder": Placeholder}
