"""A local Lambda event source mapping (ESM) for DynamoDB Streams and Kinesis, driven by a synthesized template.

Why this is hand-written: moto serves DynamoDB Streams and Kinesis, but it has no Lambda stream poller -- nothing
in moto reads a shard, batches records, invokes a function and applies the ESM's error handling. The connector's
correctness depends on exactly those semantics (the lowest-sequence checkpoint of ``ReportBatchItemFailures``,
bisect, retries, record age, the on-failure destination, timeouts), so the local cloud reproduces them here,
from the ``AWS::Lambda::EventSourceMapping`` resources of the synthesized CDK template.

What it does, per mapping and per shard (one thread each, so one batch in flight per shard):

* polls the shard (``dynamodbstreams`` / ``kinesis`` ``GetShardIterator`` + ``GetRecords``) from
  ``StartingPosition`` (``TRIM_HORIZON``, ``LATEST``, Kinesis ``AT_TIMESTAMP``); shards that appear later
  (resharding) are read from ``TRIM_HORIZON`` once their parent is drained;
* builds records shaped like Lambda's (``eventID``, ``eventSourceARN``, base64 Kinesis ``data``,
  DynamoDB ``SequenceNumber`` ...);
* applies ``FilterCriteria`` with moto's EventBridge pattern matcher (``moto.events.models.EventPattern``);
  filters are ORed; for Kinesis the pattern's ``data`` applies to the decoded JSON payload (records whose data is
  not JSON never match a ``data`` pattern). Filtered-out records are checkpointed, never delivered;
* batches up to ``BatchSize`` records (and 6 MB), waiting up to ``MaximumBatchingWindowInSeconds``;
* invokes the function in a warm worker process (:mod:`localcloud.esm.worker`) with the template's environment
  resolved to local endpoints; a worker that overruns ``Timeout`` is killed (a function error);
* with ``ReportBatchItemFailures`` checkpoints at the **lowest** reported sequence number and redelivers from
  there; a null/empty response or an empty/absent ``batchItemFailures`` is success; an ``itemIdentifier``
  that is empty, null, under another key or not in the batch, or a response that is not a JSON object, fails
  the whole batch;
* on a function error (raise, timeout, crash, invalid response) retries the batch; with
  ``BisectBatchOnFunctionError`` splits it in halves first (splits do not consume the retry budget); after
  ``MaximumRetryAttempts`` retries, or once records are older than ``MaximumRecordAgeInSeconds``, sends the
  on-failure message to ``DestinationConfig.OnFailure`` and moves on: to an SQS queue the batch *coordinates*
  only; to an S3 bucket one object per batch, ``aws/lambda/<ESM UUID>/<shard id>/YYYY/MM/DD/
  YYYY-MM-DDTHH.MM.SS-<uuid>``, with the coordinates and ``payload``, the invocation event as an escaped JSON
  string, as AWS documents it (:mod:`.batch_policy`; the ESM UUID is derived from the stack and logical id);
* publishes Lambda's metrics to moto's CloudWatch (:mod:`.metrics`): ``AWS/Lambda`` ``IteratorAge`` by
  ``FunctionName`` after every batch, ``OnFailureDestinationDeliveredEventCount`` by ``EventSourceMappingUUID``;

* polls each shard at Lambda's documented base rate -- Kinesis once a second, DynamoDB Streams four times a
  second -- with jitter (``poll_interval``, ``poll_jitter``) whenever the last read found nothing new; with a
  backlog it reads again as soon as a batch is done;
* **reserved concurrency** (``ReservedConcurrentExecutions``): an invoke that finds every slot busy is *rejected*,
  as Lambda does: it counts as a Lambda ``Throttles`` data point (``RunnerStats.throttles``) and the shard's
  poller retries it after a jittered exponential backoff (``throttle_backoff_s`` doubling up to
  ``max_throttle_backoff_s``, times a factor drawn in ``[1, 1 + throttle_jitter]``). Throttled attempts do not
  count against ``MaximumRetryAttempts``; the records keep ageing, so they do count against
  ``MaximumRecordAgeInSeconds``. The backoff Lambda really uses is not documented: the default (1 s doubling to
  30 s) is a pessimistic guess, modelled on the documented backoff of throttled asynchronous invokes;
* optional, for tests: ``dynamodb_shards=n`` spreads one DynamoDB stream shard over ``n`` shards by key hash
  (like a table with ``n`` partitions: per-key order kept, shards invoked in parallel), and
  :meth:`EsmRunner.ttl_delete` deletes an item as DynamoDB's TTL would, so its ``REMOVE`` record carries
  ``userIdentity {type: Service, principalId: dynamodb.amazonaws.com}``.

Undocumented choices, pessimistic by default and switchable: ``partial_counts_as_retry`` (a partial response
that moved the checkpoint still counts against ``MaximumRetryAttempts``; default True).

Known gaps (documented, not emulated): ``ParallelizationFactor`` above 1 is treated as 1; tumbling windows,
KPL de-aggregation, enhanced fan-out, SNS on-failure destinations and the account-level (unreserved)
concurrency limit are not modelled; checkpoints live in memory only.

Usage::

    resources = provision(template_path, endpoint_url=moto_url)
    with EsmRunner(template_path, resources, moto_endpoint=moto_url,
                   personalize_endpoint=emulator_url) as runner:
        ...                       # write to the table / stream
        runner.wait_idle(30)      # every shard drained, nothing in flight
        print(runner.stats())

Modules: :mod:`.runner` (the runner), :mod:`.poller` (one shard), :mod:`.function_pool` (warm workers and
reserved concurrency), :mod:`.batch_policy` (partial responses, on-failure messages), :mod:`.config` (the
template's mappings and functions), :mod:`.ledger` (invocations and counters). :mod:`localcloud.esm_runner`
re-exports the public names.
"""
