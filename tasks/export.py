"""CSV exports of readings, stored in GridFS (bucket ``exports``) for download.

One file per job, with the job id as the file's ``_id``: a task that runs again
(redelivered after a worker crash) finds either a complete file (GridFS writes the
file document last) and keeps it, or leftover chunks of a partial upload, which it
deletes before writing afresh. So each job has at most one file, whatever happens.

The CSV is in long form, one row per value: ``ts,device,stream,metric,value``. The
range is planned and read like a report's (:func:`tasks.report.plan_job`, one ``hk``
equality read per device-hour, no scan): rows come hour by hour, within an hour device
by device, and within a device-hour in storage order (sorting would hold the hour in
memory).
String cells that a spreadsheet would run as a formula (starting with ``=``, ``+``,
``-``, ``@``, tab or carriage return) get a leading ``'`` (OWASP, CSV injection);
numbers and booleans are written as they are. Rows end in CRLF, so a cell holding
either line break is quoted and cannot forge a row.
Tested on FerretDB 1.24, where GridFS works with its ordinary indexes.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import gridfs
from pymongo.database import Database

from fairway.domain.job_params import ExportParams
from fairway.kernel.times import iso_z
from tasks.report import Progress, check_limit, plan_job, planned_progress, read_planned

BUCKET = "exports"
COLUMNS = ("ts", "device", "stream", "metric", "value")
FLUSH_BYTES = 256 * 1024  # CSV text buffered before it is written to GridFS
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def bucket(db: Database) -> gridfs.GridFSBucket:
    """The GridFS bucket holding export files."""
    return gridfs.GridFSBucket(db, bucket_name=BUCKET)


def file_info(db: Database, job_id: str) -> dict[str, Any] | None:
    """The export's GridFS file document, or None if it is not (completely) written."""
    return db[f"{BUCKET}.files"].find_one({"_id": job_id})


def open_file(db: Database, job_id: str) -> gridfs.GridOut:
    """A readable stream of the export (raises ``gridfs.NoFile`` if absent)."""
    return bucket(db).open_download_stream(job_id)


def delete_file(db: Database, job_id: str) -> None:
    """Remove the export file and any chunks of a partial upload."""
    db[f"{BUCKET}.files"].delete_one({"_id": job_id})
    db[f"{BUCKET}.chunks"].delete_many({"files_id": job_id})


def safe_cell(value: Any) -> Any:
    """A string a spreadsheet would take for a formula, prefixed with ``'``; else as is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_rows(doc: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """One reading as CSV rows, one per value (``ts`` in epoch milliseconds)."""
    ts = iso_z(int(doc["ts"]) / 1000)
    device, stream = safe_cell(doc["device"]), safe_cell(doc["stream"])
    for metric, value in (doc.get("values") or {}).items():
        if isinstance(value, bool):
            value = "true" if value else "false"  # as in the JSON the device sent
        yield ts, device, stream, safe_cell(metric), safe_cell(value)


def _summary(info: dict[str, Any]) -> dict[str, Any]:
    return {
        "file": info["filename"],
        "bytes": info["length"],
        "rows": info.get("rows", 0),
        "readings": info.get("readings", 0),
    }


def export_csv(
    db: Database,
    job_id: str,
    tenant: str,
    params: ExportParams,
    max_readings: int,
    progress: Progress,
    db_share: float = 1.0,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Write the job's CSV file (once) and return its size, row and reading counts."""
    done = file_info(db, job_id)
    if done is not None:  # completed by an earlier run of this job
        return _summary(done)
    delete_file(db, job_id)  # chunks of an interrupted run
    plan = plan_job(db, tenant, params.device, params.start, params.end, now or datetime.now(UTC))
    check_limit(plan, max_readings)
    throttle = planned_progress(progress, plan)
    upload = bucket(db).open_upload_stream_with_id(
        job_id, f"{job_id}.csv", metadata={"tenant": tenant, "content_type": "text/csv"}
    )
    buffer = io.StringIO()
    # CRLF (RFC 4180): Python 3.11 quotes a field only for the characters of the line
    # terminator, so with "\n" alone a device's "\r" would start a forged row.
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    readings = rows = 0
    try:
        fields = ("device", "stream", "values")
        for doc in read_planned(db, plan, fields, db_share, throttle.hour_read):
            readings += 1
            for row in csv_rows(doc):
                writer.writerow(row)
                rows += 1
            if buffer.tell() >= FLUSH_BYTES:
                upload.write(buffer.getvalue().encode())
                buffer.seek(0)
                buffer.truncate()
                throttle(readings)
        upload.write(buffer.getvalue().encode())
        # GridFS writes the file document on close: only then is the export visible.
        upload.rows, upload.readings = rows, readings  # extra fields of the file document
        upload.close()
    except BaseException:
        upload.abort()  # deletes the chunks written so far
        raise
    throttle(readings, force=True)
    return _summary(file_info(db, job_id) or {})
