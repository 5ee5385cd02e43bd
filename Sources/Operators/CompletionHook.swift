import AWSCore
import AWSServices
import FoundationEssentials
import Logging
import TaskLedger

/// `controller --on-complete COMMAND`: an operator's command, run once when the run is over (the queue drained and
/// every worker gone), to merge the results or send a notification. It gets the run in its environment
/// (`environment(...)`), and its output goes to the controller's log.
///
/// "Once" is kept in the ledger, when there is one: before the command starts, a conditional write claims the
/// item `complete#<run start>` (the run `enqueue` recorded on the queue's tags), so a controller that restarts, or
/// a second one, finds the claim and does not run it again. A claim whose command never recorded its end (the
/// controller died meanwhile) is not taken over either: at most once, and the log says how to run it again.
/// Without a ledger, "once" holds for one controller's life.
public struct CompletionHook: Sendable {
    public var command: String
    /// The command is killed (its whole process group) after this long.
    public var timeout: Double = 3600

    public init(command: String) { self.command = command }

    /// What the run comes to, for the command's environment.
    public struct Run: Sendable, Equatable {
        public var queueURL: String
        public var manifest: RunManifest?
        /// From the ledger's heartbeats (of the daemons that started in this run, when its start is known).
        public var tasksDone: Int?
        public var tasksFailed: Int?
        public var deadLetters: Int?
        public var instancesStopped: Int

        public init(queueURL: String, instancesStopped: Int) {
            self.queueURL = queueURL
            self.instancesStopped = instancesStopped
        }

        /// The command's variables (`PARALLELIZER_*`); a value not known is left out, never empty.
        public var environment: [String: String] {
            var e = [
                "PARALLELIZER_QUEUE_URL": queueURL,
                "PARALLELIZER_INSTANCES_STOPPED": String(instancesStopped),
            ]
            if let manifest {
                e["PARALLELIZER_RUN_SOURCE"] = manifest.source
                e["PARALLELIZER_RUN_STARTED"] = String(Int(manifest.started))
                e["PARALLELIZER_RUN_SENT"] = String(manifest.sent)
                e["PARALLELIZER_RUN_SKIPPED"] = String(manifest.skipped)
            }
            if let tasksDone { e["PARALLELIZER_TASKS_DONE"] = String(tasksDone) }
            if let tasksFailed { e["PARALLELIZER_TASKS_FAILED"] = String(tasksFailed) }
            if let deadLetters { e["PARALLELIZER_DEAD_LETTERS"] = String(deadLetters) }
            return e
        }

        /// Sums the heartbeats of the daemons that worked in this run: written since it started (all of them when its
        /// start is unknown). A daemon started before the run's `enqueue` is one of them.
        public mutating func count(_ heartbeats: [InstanceHeartbeat]) {
            let since = manifest?.started ?? 0
            let ours = heartbeats.filter { ($0.updatedEpoch ?? 0) >= since - 1 }
            tasksDone = ours.reduce(0) { $0 + $1.tasksDone }
            tasksFailed = ours.reduce(0) { $0 + $1.tasksFailed }
        }
    }

    /// The ledger item that records the hook of the run that started at `started` (the run `enqueue` recorded).
    static func sortKey(runStarted started: Double) -> String {
        LedgerSchema.completionPrefix + String(Int(started))
    }

    public enum Result: Sendable, Equatable {
        /// It ran now and exited 0, or had run already with success.
        case done
        /// It failed now, or had failed (or never recorded its end) before, or cannot be kept to once: not run
        /// again. Status 2: the operator looks, the unit does not restart.
        case failed(String)
        /// The claim could not be written (a throttle, the network): not run, so that it never runs twice;
        /// status 1, for a restart to try again.
        case notNow(String)
    }

    /// Runs the command unless the ledger shows it ran for this run already.
    public func fire(_ run: Run, ledger: (client: DynamoDBClient, table: String)?, logger: Logger) async -> Result {
        typealias F = LedgerSchema.Completion
        guard let ledger else {
            logger.notice("no ledger table: the completion hook runs once for this controller's life only")
            return await runAndRecord(run, key: nil, ledger: nil, logger: logger)
        }
        // "Once" is once per run: without the run's start, every run on the queue would share one claim.
        guard let started = run.manifest?.started else {
            return .failed(
                "the completion hook was not run: the queue's tags hold no run (enqueue records one), and without it the ledger cannot keep the hook to once per run; run it by hand, or leave out --ledger-table"
            )
        }
        let key: DynamoItem = [
            LedgerSchema.partitionKey: .s(LedgerSchema.queueName(run.queueURL)),
            LedgerSchema.sortKey: .s(Self.sortKey(runStarted: started)),
        ]
        var item = key
        item[LedgerSchema.kind] = .s(F.kind)
        item[F.state] = .s("running")
        item[F.command] = .s(String(command.prefix(1000)))
        item[F.startedEpoch] = .number(Date().timeIntervalSince1970)
        do {
            try await ledger.client.putItem(
                table: ledger.table, item: item, condition: "attribute_not_exists(#t)",
                names: ["#t": LedgerSchema.sortKey], logger: logger)
        } catch  where error.shortCode == "ConditionalCheckFailedException" {
            return await ranBefore(key: key, ledger: ledger, logger: logger)
        } catch  where error.setupProblem != nil {
            return .failed(
                "the completion hook was not run: its claim in the ledger is refused (\(error)); give the controller dynamodb:PutItem and dynamodb:UpdateItem on \(ledger.table) (setup-aws --controller does)"
            )
        } catch {
            return .notNow(
                "cannot record the completion hook's start in the ledger (\(error)): not run, so that it runs once")
        }
        return await runAndRecord(run, key: key, ledger: ledger, logger: logger)
    }

    /// Runs the command (in `/`), and records its end in the claim (`key`) when there is one.
    func runAndRecord(
        _ run: Run, key: DynamoItem?, ledger: (client: DynamoDBClient, table: String)?, logger: Logger
    ) async -> Result {
        typealias F = LedgerSchema.Completion
        logger.notice(
            "running the completion hook",
            metadata: ["command": "\(command)", "environment": "\(run.environment.sorted { $0.key < $1.key })"])
        let started = ContinuousClock.now
        let outcome = await OperatorCommand.run(command, environment: run.environment, timeout: timeout)
        let seconds = (started.duration(to: .now) / .milliseconds(1)).rounded() / 1000
        let result: Result
        let status: String
        switch outcome {
        case .exited(0):
            logger.notice("the completion hook is done", metadata: ["seconds": "\(seconds)"])
            result = .done
            status = "0"
        case .exited(let code):
            result = .failed("the completion hook failed with exit status \(code)")
            status = String(code)
        case .timedOut:
            result = .failed("the completion hook ran past \(Int(timeout)) s and was killed")
            status = "timeout"
        case .notStarted(let why):
            result = .failed("the completion hook could not start: \(why)")
            status = "not started"
        }
        if let ledger, let key {
            do {
                try await ledger.client.updateItem(
                    table: ledger.table, key: key, update: "SET #s = :s, #x = :x, #e = :e",
                    names: ["#s": F.state, "#x": F.exitStatus, "#e": F.endedEpoch],
                    values: [
                        ":s": .s(result == .done ? "done" : "failed"), ":x": .s(status),
                        ":e": .number(Date().timeIntervalSince1970),
                    ],
                    logger: logger)
            } catch {
                logger.warning(
                    "cannot record the completion hook's end in the ledger; it is not run again all the same",
                    metadata: ["error": "\(error)"])
            }
        }
        return result
    }

    /// The claim was there: what it says of the earlier run.
    func ranBefore(key: DynamoItem, ledger: (client: DynamoDBClient, table: String), logger: Logger) async -> Result {
        typealias F = LedgerSchema.Completion
        let sortKey = key[LedgerSchema.sortKey]?.string ?? ""
        let again = "delete the ledger item \(sortKey) to run it again, or run it by hand"
        let item: DynamoItem?
        do {
            item = try await ledger.client.query(
                table: ledger.table, keyCondition: "#q = :q AND #t = :t",
                names: ["#q": LedgerSchema.partitionKey, "#t": LedgerSchema.sortKey],
                values: [":q": key[LedgerSchema.partitionKey]!, ":t": key[LedgerSchema.sortKey]!], consistent: true,
                logger: logger
            ).items.first
        } catch {
            return .notNow("the completion hook was claimed before, and its record cannot be read now (\(error))")
        }
        let state = item?[F.state]?.string ?? "unknown"
        let when = item?[F.startedEpoch]?.double.map { CivilTime(epochSeconds: Int64($0)).iso8601 } ?? "an unknown time"
        switch state {
        case "done":
            logger.notice(
                "the completion hook ran already for this run; not run again", metadata: ["started": "\(when)"])
            return .done
        case "failed":
            return .failed(
                "the completion hook failed already for this run (started \(when), exit status \(item?[F.exitStatus]?.string ?? "unknown")); not run again: \(again)"
            )
        default:
            return .failed(
                "the completion hook was started at \(when) and never recorded its end (its controller died?); not run again: \(again)"
            )
        }
    }
}
