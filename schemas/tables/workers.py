"""The workers' own bookkeeping: who is alive, and how often a job failed transiently."""
import datajoint as dj


class LiveWorker(dj.Manual):
    definition = """
    # running workers; each one's background thread updates last_beat every few seconds
    host : varchar(255)           # platform.node(), as in the job tables
    pid : int32
    ---
    device = "" : varchar(32)
    started = CURRENT_TIMESTAMP(3) : datetime(3)
    last_beat = CURRENT_TIMESTAMP(3) : datetime(3)   # server time
    """


class TransientFailure(dj.Manual):
    definition = """
    # transient failures retried automatically, counted per job
    table_name : varchar(64)      # the computed table, e.g. TrainedModel
    job_hash : char(32)           # schemas.tables.hashing.config_hash of the job's primary key
    ---
    attempts : int32
    last_error : varchar(2047)
    """
