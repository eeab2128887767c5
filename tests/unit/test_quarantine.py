"""The local file quarantine: layout, gzip, records, durability on failure, corrupt records."""

import io
import os
import time

import pytest

from pymavis.quarantine import FileStore, QuarantineError, Record

RAW = b"From: a@example.org\r\nSubject: x\r\n\r\n" + b"body line\r\n" * 5000


def record(mail_id="AbCdEf012345", category="virus", when=None):
    return Record(mail_id=mail_id, secret_id="s3cr3t", category=category, reason="INFECTED: Eicar",
                  sender="a@example.org", recipients=("bob@example.com", "ann@example.com"),
                  size=len(RAW), time=when or time.time(), queue_id="4QABC")


@pytest.mark.parametrize("levels, compress", [(0, False), (1, False), (2, True)])
def test_put_then_read_back(tmp_path, levels, compress):
    store = FileStore(tmp_path, subdir_levels=levels, compress=compress)
    rec = store.put(record(), io.BytesIO(RAW))
    expected_dir = "/".join("AbCdEf012345"[:levels])
    assert rec.location == os.path.join(expected_dir, "virus-AbCdEf012345" + (".gz" if compress else ""))
    assert (tmp_path / rec.location).is_file()
    again = store.record("AbCdEf012345")
    assert again == rec and again.recipients == ("bob@example.com", "ann@example.com")
    with store.open(again) as fh:
        assert fh.read() == RAW
    assert [r.mail_id for r in store.records()] == ["AbCdEf012345"]
    assert not list((tmp_path / "tmp").iterdir())          # nothing left behind
    if compress:
        assert (tmp_path / rec.location).stat().st_size < len(RAW) // 10


def test_categories_use_amavis_prefixes(tmp_path):
    store = FileStore(tmp_path)
    for mail_id, ccat, prefix in (("Aa1", "banned", "banned-"), ("Bb2", "SPAM", "spam-"),
                                  ("Cc3", "bad-header", "badh-")):
        assert os.path.basename(store.put(record(mail_id, ccat), RAW).location) == prefix + mail_id


def test_records_oldest_first_and_delete(tmp_path):
    store = FileStore(tmp_path)
    store.put(record("New1", when=2000.0), RAW)
    old = store.put(record("Old1", when=1000.0), RAW)
    assert [r.mail_id for r in store.records()] == ["Old1", "New1"]
    store.delete(old)
    assert [r.mail_id for r in store.records()] == ["New1"]
    with pytest.raises(QuarantineError, match="no quarantined message with mail_id Old1"):
        store.record("Old1")


def test_unknown_and_malicious_mail_ids(tmp_path):
    store = FileStore(tmp_path)
    with pytest.raises(QuarantineError, match="no quarantined message"):
        store.record("Nope123")
    for bad in ("../etc", "a/b", "", "-x"):
        with pytest.raises(QuarantineError, match="not a mail_id"):
            store.record(bad)


def test_corrupt_record_is_named(tmp_path):
    store = FileStore(tmp_path)
    rec = store.put(record(), RAW)
    path = tmp_path / os.path.dirname(rec.location) / "AbCdEf012345.json"
    path.write_text('{"mail_id": "AbCdEf012345", "broken"')
    with pytest.raises(QuarantineError, match=r"AbCdEf012345\.json: corrupt quarantine record"):
        store.record("AbCdEf012345")
    with pytest.raises(QuarantineError, match="corrupt quarantine record"):
        store.records()


def test_failed_write_leaves_nothing_and_says_where(tmp_path):
    class Broken(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, b):
            raise OSError(5, "Input/output error")

    store = FileStore(tmp_path)
    with pytest.raises(QuarantineError, match="Input/output error"):
        store.put(record(), Broken())
    assert store.records() == []
    assert not list((tmp_path / "tmp").iterdir())


def test_unwritable_root_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(QuarantineError, match=str(tmp_path / "file")):
        FileStore(tmp_path / "file" / "q").put(record(), RAW)


def test_orphans_are_messages_without_records(tmp_path):
    store = FileStore(tmp_path)
    rec = store.put(record(), RAW)
    (tmp_path / os.path.dirname(rec.location) / "AbCdEf012345.json").unlink()
    assert store.orphans(older_than_s=3600) == []           # may still be being written
    assert store.orphans(older_than_s=-1) == [tmp_path / rec.location]
