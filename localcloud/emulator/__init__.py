r"""Amazon Personalize Events emulator: a local, wire-compatible stand-in for ``personalize-events``.

Why this is hand-written
------------------------
Nothing installed here mocks ``personalize-events``: moto 5.2.5 has no backend for it (server mode answers
unknown services with an error), and botocore's ``Stubber`` only works inside one process, so neither the
AWS CLI, nor the event source mapping runner's worker processes, nor a user's own script could reach it.
The local cloud needs a real HTTP endpoint that boto3 and the AWS CLI talk to *unchanged* (``endpoint_url``,
``AWS_ENDPOINT_URL_PERSONALIZE_EVENTS`` or ``--endpoint-url``), that enforces the service's limits and quota,
and that exposes what landed. That is this module: standard library only (``http.server``).

Protocol (from botocore's model ``personalize-events/2018-03-22/service-2.json``)
-------------------------------------------------------------------------------
rest-json, SigV4 with signing name ``personalize``. ``POST /items`` (PutItems), ``POST /users`` (PutUsers) and
``POST /events`` (PutEvents, validated lightly and accepted). Success is an empty ``200``. Errors carry the
``X-Amzn-ErrorType`` header and a ``{"message": ...}`` body, which botocore's ``RestJSONParser`` maps to
``client.exceptions.<Code>``:

======================================  ======  ==========================================================
code                                    status  when
======================================  ======  ==========================================================
MissingAuthenticationTokenException     403     no ``Authorization`` header
IncompleteSignatureException            403     ``Authorization`` is not ``AWS4-HMAC-SHA256 Credential=..``
InvalidSignatureException               403     credential scope is not ``.../personalize/aws4_request``
AccessDeniedException                   403     dataset registered with ``access_denied=True``
SerializationException                  400     body is not a JSON object, or a member has the wrong JSON type
InvalidInputException                   400     a model constraint or the dataset's schema is violated
ThrottlingException                     400     quota exceeded or injected (botocore retries it: it is in
                                                both the standard and legacy throttling code lists)
ResourceNotFoundException               404     the dataset is not registered
ResourceInUseException                  409     the dataset's status is not ``ACTIVE``
InternalServerError / ServiceUnavailable 500/503 injected faults (botocore retries 500/502/503/504)
UnknownOperationException               404     any other path
======================================  ======  ==========================================================

The signature itself is never verified; only its presence and its credential scope are.

Order of checks for PutItems / PutUsers (one bad item fails the whole call; there is no per-item result):

1. route, 2. SigV4 presence and scope, 3. body is a JSON object, 4. ``datasetArn`` present, a string, at most
256 characters and fully matching ``arn:([a-z\d-]+):personalize:.*:.*:.+``, 5. injected faults (scripted
errors first, then the random throttle / 5xx shares), 6. the quota, 7. the dataset exists, access, status
``ACTIVE`` and the dataset type (ITEMS for PutItems, USERS for PutUsers), 8. list 1..10, each id
1..256 characters, properties 1..32,000 characters (PutUsers: 24,000), a JSON object, then the dataset's
Avro schema, 9. write (full replace per id, latest call wins), 10. latency (plus the slow-response fault)
is applied before the response is written, so a "slow" call has already landed when the client times out.

Lengths are counted in Unicode code points, as Smithy's ``@length`` trait defines them (an emoji counts 1).

Schema checks (when the dataset has an Avro schema): property keys are the camelCase forms of the field names
(``NUMBER_OF_RATINGS`` -> ``numberOfRatings``); the id field (``ITEM_ID`` / ``USER_ID``) is not a property.
Rejected: unknown keys, ``null`` for a field without a ``"null"`` branch, a missing field that is not nullable
(an Avro ``default`` does not make it optional), a wrong JSON type, ints outside 32 bits / longs outside 64 bits,
a categorical string over 1,000 characters (the whole ``|``-joined value), any other non-textual string over
1,000 characters, a textual string over 20,000 characters (7,000 when it holds Chinese or Japanese characters:
the pessimistic reading of "7,000 for Chinese and Japanese"), a boolean spelt other than lower-case ``true`` /
``false``, and a ``CREATION_TIMESTAMP`` of 10^11 or more (milliseconds, where the service wants seconds).
Numbers sent as numeric strings (``{"numberOfRatings": "12"}``, the form used in the API reference's own
example) are accepted unless ``strict_types=True``. Without a schema, any JSON object is accepted.

Quota: per (operation, dataset group), counted by a pluggable model (:mod:`localcloud.emulator.quota`):
``sliding-window`` (the default: a call is admitted when fewer than ``tps`` calls were admitted for that key in
the last 1.0 s, measured on arrival), ``token-bucket`` (``quotaBurst``), ``fixed-window`` or ``strict-spacing``;
throttled calls do not consume quota, calls that fail validation later do. ``requestJitterMs`` delays each
call by a random network delay before it reaches the quota; ``foreignShare`` adds another writer that uses
that share of the dataset group's quota. The dataset group is derived from the ARN
(``arn:aws:personalize:<region>:<acct>:dataset/<group>/ITEMS`` belongs to
``arn:aws:personalize:<region>:<acct>:dataset-group/<group>``), so all datasets of one group share it.
PutEvents has no quota here.

Admin/read API (JSON, under ``/_emulator/``, which no real operation uses; not signed):

=======  =========================================  ==========================================================
GET      /_emulator/health                          ``{"status": "ok", "endpointUrl": ...}``
GET      /_emulator/config                          current knobs
POST     /_emulator/config                          patch knobs (``tps``, ``latencyMs``, ``jitterMs``,
                                                    ``throttleRate``, ``errorRate``, ``errorStatus``,
                                                    ``slowRate``, ``slowMs``, ``strictTypes``, ``autoCreate``,
                                                    ``quotaModel``, ``quotaBurst``, ``foreignShare``,
                                                    ``requestJitterMs``)
GET      /_emulator/datasets                        registered datasets
POST     /_emulator/datasets                        ``{"datasetArn", "schema"?, "status"?, "accessDenied"?}``
GET      /_emulator/items?datasetArn=ARN            ``{"datasetArn", "items": {id: properties}}``
GET      /_emulator/stats                           counters (see ``EmulatorState.stats``)
GET      /_emulator/calls?since=N                   call log entries with ``seq >= N``, and ``next``
GET      /_emulator/accepted?since=N                the accepted-items log (only with ``log_items``): per
                                                    accepted call ``seq``, ``ts`` (when its items were
                                                    written), ``dataset_arn`` and ``items`` ``[[id, props]]``
POST     /_emulator/inject                          ``{"errors": [code, ...], "operation": "PutItems"}``
POST     /_emulator/reset                           ``{"datasets": false}``
=======  =========================================  ==========================================================

The accepted-items log is off by default (``log_items=False``; ``--log-items`` on the command line): it keeps the
properties of every item of every accepted call, which is what a change-to-visible latency measurement needs (when
did an item first become visible in a given version) and what a long chaos run does not want to hold in memory.

Python: :class:`PersonalizeEmulator` (server in a background thread, context manager) and
:class:`EmulatorClient` (the same read/admin methods over HTTP, for another process). Command line::

    python -m localcloud.personalize_emulator --port 4599 --dataset ARN [--schema FILE]         --tps 10 --latency-ms 50

Modules: :mod:`.server` (the wire server, admin API and client, command line), :mod:`.state` (datasets, items
and request handling), :mod:`.schema` (schema validation), :mod:`.quota` (quota models), :mod:`.errors` (error
codes). :mod:`localcloud.personalize_emulator` re-exports the public names.
"""
