"""`S3Store` against a real MinIO: the shared `Store` contract plus what only S3 can get wrong.

The contract (`StoreContract` in tests/unit/test_local_store.py) runs here unchanged, each
test in a fresh bucket, so the local store and S3 are held to the same behaviour. On top:
conditional writes must be the server's real preconditions (not the racy fallback), a lost
response must not turn a won write into a loss, listing must page past 1000 keys, and the
three failures users meet first must say what to do: a missing bucket, a wrong secret key (never
echoed) and an unreachable endpoint (in seconds, not minutes).

A missing server fails these tests (never skips): start it with `.ci/services/minio.sh start`,
or point METATIDE_TEST_S3_ENDPOINT and its family at another one.
"""

from __future__ import annotations

import asyncio
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from metatide.extractor.core.errors import (
    CredentialsError,
    SpecError,
    StorageUnavailableError,
)
from metatide.extractor.core.spec import ExtractionSpec
from metatide.extractor.storage import open_store
from metatide.extractor.storage.s3 import LIST_PAGE, S3Store, _ConditionalSupport
from tests.services import delete_bucket, fresh_bucket, require_s3, s3_client, s3_settings
from tests.unit.test_local_store import StoreContract, StoreFactory, listing, run

pytestmark = pytest.mark.integration

ACCESS_ENV = "METATIDE_TEST_S3STORE_ACCESS_KEY"
SECRET_ENV = "METATIDE_TEST_S3STORE_SECRET_KEY"
URL_PREFIX = "tenant-a/extractions"
CONNECTION_PREFIX = "persistent-artifacts/apps/app/connection/conn"


def s3_spec(
    bucket: str, endpoint: str | None = None, url_prefix: str = URL_PREFIX
) -> ExtractionSpec:
    url = f"s3://{bucket}/{url_prefix}" if url_prefix else f"s3://{bucket}"
    return ExtractionSpec.model_validate(
        {
            "applicationName": "app",
            "connectionId": "conn",
            "source": {"kind": "sqlite", "path": "unused.db"},
            "storage": {
                "url": url,
                "endpoint": endpoint or s3_settings().endpoint,
                "secure": False,
                "accessKeyFrom": {"env": ACCESS_ENV},
                "secretKeyFrom": {"env": SECRET_ENV},
            },
        }
    )


@pytest.fixture(scope="module", autouse=True)
def _server() -> None:
    require_s3()


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = s3_settings()
    monkeypatch.setenv(ACCESS_ENV, settings.access_key)
    monkeypatch.setenv(SECRET_ENV, settings.secret_key)


@pytest.fixture
def bucket() -> Iterator[str]:
    name = fresh_bucket("s3store")
    yield name
    delete_bucket(name)


@pytest.fixture
def make_s3_store(bucket: str, credentials: None) -> Callable[[], S3Store]:
    spec = s3_spec(bucket)
    return lambda: S3Store.from_spec(spec)


@pytest.fixture
def make_store(make_s3_store: Callable[[], S3Store]) -> StoreFactory:
    return make_s3_store


class TestS3StoreContract(StoreContract):
    """The `Store` contract on MinIO (make_store comes from this module)."""


def object_names(bucket: str) -> set[str]:
    return {
        obj.object_name
        for obj in s3_client().list_objects(bucket, recursive=True)
        if obj.object_name is not None
    }


def test_keys_land_below_the_url_prefix_and_the_connection_prefix(
    make_store: StoreFactory, bucket: str
) -> None:
    store = make_store()
    run(store.put("current-state/_manifest.json", b"{}"))
    assert object_names(bucket) == {
        f"{URL_PREFIX}/{CONNECTION_PREFIX}/current-state/_manifest.json"
    }
    assert run(listing(store, "")) == {"current-state/_manifest.json": 2}


def test_a_bucket_without_url_prefix_works(bucket: str, credentials: None) -> None:
    store = S3Store.from_spec(s3_spec(bucket, url_prefix=""))
    run(store.put("marker.txt", b"m"))
    assert object_names(bucket) == {f"{CONNECTION_PREFIX}/marker.txt"}
    assert store.location == f"s3://{bucket}/{CONNECTION_PREFIX} ({s3_settings().endpoint})"


def test_open_store_picks_s3_and_location_hides_credentials(bucket: str, credentials: None) -> None:
    store = open_store(s3_spec(bucket))
    assert isinstance(store, S3Store)
    endpoint = s3_settings().endpoint
    assert store.location == f"s3://{bucket}/{URL_PREFIX}/{CONNECTION_PREFIX} ({endpoint})"
    secret = s3_settings().secret_key
    assert secret not in store.location
    assert secret not in repr(store)


def test_the_real_conditional_writes_are_used(make_s3_store: Callable[[], S3Store]) -> None:
    store = make_s3_store()
    assert run(store._conditional_support()) == _ConditionalSupport(
        if_none_match=True, if_match=True
    )
    # The probe cleans up after itself and is never listed.
    assert run(listing(store, "")) == {}


def test_get_returns_the_etag_as_version(make_store: StoreFactory, bucket: str) -> None:
    store = make_store()
    run(store.put("k", b"hello"))
    stat = s3_client().stat_object(bucket, f"{URL_PREFIX}/{CONNECTION_PREFIX}/k")
    assert run(store.get("k")).version == (stat.etag or "").strip('"')


def test_a_lost_response_does_not_turn_a_won_write_into_a_loss(
    make_s3_store: Callable[[], S3Store], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt reaches the server but its answer is lost; the retry sees 412."""
    store = make_s3_store()
    run(store._conditional_support())
    real_try_put = store._try_put
    calls = 0

    def lose_first_response(key: str, name: str, data: bytes, condition: dict[str, str]) -> bool:
        nonlocal calls
        calls += 1
        result = real_try_put(key, name, data, condition)
        if calls == 1:
            raise StorageUnavailableError("simulated: connection reset after the request")
        return result

    monkeypatch.setattr(store, "_try_put", lose_first_response)
    assert run(store.put_if_absent("lease.json", b"mine")) is True
    version = run(store.get("lease.json")).version
    calls = 0
    assert run(store.replace_if_match("lease.json", b"mine, renewed", version)) is True
    assert calls == 2
    # Someone else's bytes after a lost response are a real loss.
    calls = 0
    assert run(store.put_if_absent("lease.json", b"not what is stored")) is False


def test_racy_fallback_keeps_the_semantics_when_preconditions_are_ignored(
    make_s3_store: Callable[[], S3Store],
) -> None:
    store = make_s3_store()
    store._support = _ConditionalSupport(if_none_match=False, if_match=False)
    assert run(store.put_if_absent("lease.json", b"first")) is True
    assert run(store.put_if_absent("lease.json", b"second")) is False
    version = run(store.get("lease.json")).version
    assert run(store.replace_if_match("lease.json", b"third", version)) is True
    assert run(store.replace_if_match("lease.json", b"fourth", version)) is False
    assert run(store.replace_if_match("absent.json", b"x", version)) is False
    assert run(store.get("lease.json")).data == b"third"


def test_list_and_delete_page_past_a_thousand_keys(make_store: StoreFactory) -> None:
    store = make_store()
    count = LIST_PAGE + 25

    async def fill() -> None:
        keys = [f"runs/r1/columns/batch-{i:05d}.parquet" for i in range(count)]
        for start in range(0, count, 64):
            await asyncio.gather(*(store.put(key, b"x") for key in keys[start : start + 64]))

    run(fill())
    run(store.put("runs/r10/summary.json", b"{}"))
    listed = run(listing(store, "runs/r1"))
    assert len(listed) == count
    run(store.delete(sorted(listed)))
    assert run(listing(store, "runs")) == {"runs/r10/summary.json": 2}


def test_a_missing_bucket_is_a_clear_terminal_error(credentials: None) -> None:
    name = f"metatide-missing-{uuid.uuid4().hex[:12]}"
    store = S3Store.from_spec(s3_spec(name))
    for operation in (store.get("k"), store.put("k", b"x"), store.put_if_absent("k", b"x")):
        with pytest.raises(SpecError) as caught:
            run(operation)
        message = str(caught.value)
        assert f"bucket {name!r} does not exist" in message
        assert "mc mb" in message


def test_a_wrong_secret_key_is_a_credentials_error_that_never_shows_it(
    bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-secret-" + uuid.uuid4().hex
    monkeypatch.setenv(ACCESS_ENV, s3_settings().access_key)
    monkeypatch.setenv(SECRET_ENV, wrong)
    store = S3Store.from_spec(s3_spec(bucket))
    with pytest.raises(CredentialsError) as caught:
        run(store.get("k"))
    message = str(caught.value)
    assert ACCESS_ENV in message
    assert SECRET_ENV in message
    assert s3_settings().endpoint in message
    everything = "".join(traceback.format_exception(caught.value)) + repr(store)
    assert wrong not in everything
    assert s3_settings().secret_key not in everything


def test_an_unset_secret_variable_is_named(bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ACCESS_ENV, s3_settings().access_key)
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(CredentialsError, match=SECRET_ENV):
        S3Store.from_spec(s3_spec(bucket))


def test_an_unreachable_endpoint_fails_fast_and_retryably(credentials: None) -> None:
    store = S3Store.from_spec(s3_spec("any-bucket", endpoint="127.0.0.1:1"))
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as caught:
        run(store.get("k"))
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"took {elapsed:.1f}s"
    assert "127.0.0.1:1" in str(caught.value)


@pytest.mark.parametrize(
    ("url", "endpoint", "fragment"),
    [
        ("s3://Not_A_Bucket/x", "127.0.0.1:9000", "not a valid S3 bucket name"),
        ("s3:///prefix-only", "127.0.0.1:9000", "must look like s3://bucket"),
        ("s3://bucket", "http://127.0.0.1:9000", "without a scheme"),
    ],
)
def test_bad_storage_settings_are_spec_errors(
    url: str, endpoint: str, fragment: str, credentials: None
) -> None:
    spec = s3_spec("placeholder").model_copy(deep=True)
    storage = spec.storage.model_copy(update={"url": url, "endpoint": endpoint})
    spec = spec.model_copy(update={"storage": storage})
    with pytest.raises(SpecError, match=fragment):
        S3Store.from_spec(spec)


def test_put_file_streams_a_file_larger_than_a_part(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    source = tmp_path / "large.parquet"
    source.write_bytes(uuid.uuid4().bytes * (6 * 1024 * 1024 // 16 + 1))  # > 5 MiB: multipart
    store = make_store()
    run(store.put_file("current-state/column/large.parquet", source))
    assert run(store.get("current-state/column/large.parquet")).data == source.read_bytes()
    copy = run(store.local_file("current-state/column/large.parquet", tmp_path / "copy.parquet"))
    assert copy == tmp_path / "copy.parquet"
    assert copy.read_bytes() == source.read_bytes()


def test_https_to_a_plain_http_server_says_to_turn_secure_off(
    bucket: str, credentials: None
) -> None:
    spec = s3_spec(bucket)
    spec = spec.model_copy(update={"storage": spec.storage.model_copy(update={"secure": True})})
    store = S3Store.from_spec(spec)
    with pytest.raises(SpecError, match=r"spec\.storage\.secure"):
        run(store.get("k"))
