import AWSCore
import AWSServices
@preconcurrency import Glibc
import Logging
import TaskLedger

/// `parallelizer run`: slots that receive, process and settle messages until the queue is drained or a stop is
/// asked for (SIGTERM/SIGINT, a spot interruption notice, `--once`, a dead end); then, after a drain or a dead end,
/// the end of the run (EndOfRun.swift).
///
/// The shape of a run, each scope ending what it started: the ledger around the delete batcher around the slots and
/// the monitors. A stop ends the long polls; when its grace runs out, the slots' tasks are cancelled, which kills
/// running commands and aborts transfers; then the batched deletes go, then the ledger's last writes.
public struct Daemon: Sendable {
    public struct Options: Sendable {
        /// Process at most one message, then exit (for trying a command on a live queue).
        public var once = false
        /// Long-poll wait (SQS allows 0...20 s).
        public var receiveWaitSeconds = 20
        /// Seconds before the first retry of a failed message; doubled for each earlier attempt.
        public var retryBackoff = 30
        public var spotPollSeconds = 5.0
        /// Messages per ReceiveMessage, fixed; nil lets each slot size its receives (`ReceiveSizer`).
        public var receiveBatch: Int?
        /// How long receives may keep failing with errors that may pass (the network, 5xx) before the daemon ends
        /// with status 1 for systemd to restart it, instead of trying forever.
        public var receiveOutageSeconds = 600.0
        public var ledger = Ledger.Settings()
        public init() {}
    }

    let config: WorkerConfig
    let context: AWSContext
    let options: Options
    let clock: any WorkerClock = SystemClock()

    public init(config: WorkerConfig, context: AWSContext, options: Options) {
        self.config = config
        self.context = context
        self.options = options
    }

    /// Runs to the end and returns the process exit code: 0; 2 for a dead end (a configuration error that no
    /// restart can fix); 1 for an error that a restart may get past.
    public func run(logger: Logger) async -> Int32 {
        let lifecycle = Lifecycle(grace: Double(config.shutdownGrace), clock: clock)
        let signals = installSignalHandlers(lifecycle, logger: logger)
        defer { signals.forEach { $0.cancel() } }
        let deadEnds = DeadEnds(
            failureBudget: config.failureBudget,
            reached: { deadEnd in
                logger.critical("cannot go on: \(deadEnd)", metadata: deadEnd.error.map { ["error": "\($0)"] } ?? [:])
                lifecycle.requestStop(.deadEnd)
            },
            machineTrouble: { reason, count in
                if lifecycle.requestStop(.machineTrouble) {
                    logger.critical(
                        "cannot go on here: \(count) tasks in a row met this machine's own trouble; leaving, its messages released, for a replacement",
                        metadata: ["reason": "\(reason)"])
                }
            },
            badNode: { why in
                if lifecycle.requestStop(.badNode) {
                    logger.critical(
                        "cannot go on here: \(why); leaving, its messages released without spending attempts, for a replacement"
                    )
                }
            })
        let start: StartUp.Prepared
        do {
            start = try await StartUp(config: config, context: context, options: options).prepare(logger: logger)
        } catch {
            return await startUpFailed(error, logger: logger)
        }
        logger.notice(
            "parallelizer started",
            metadata: [
                "queue": "\(config.queueURL)", "slots": "\(options.once ? 1 : config.numThreads)",
                "instance": "\(start.instanceID)",
                "version": "\(Version.current)", "input_bucket": "\(config.inputBucket)",
                "output_bucket": "\(config.outputBucket)",
            ])
        let plan = VisibilityPlan(visibilityTimeout: config.visibilityTimeout)
        let queueURL = config.queueURL
        let deletes = DeleteBatcher(client: start.sqs, queueURL: queueURL, linger: plan.deleteLinger, clock: clock) {
            id, error in
            if let error {
                deadEnds.failed(.deleteMessage, resource: queueURL, subject: id, error: error)
            } else {
                deadEnds.succeeded(.deleteMessage)
            }
        }
        let processor = MessageProcessor(
            config: config, setting: start.setting,
            queue: SQSWorkQueue(sqs: start.sqs, queueURL: queueURL, plan: plan, deletes: deletes), store: start.s3,
            runner: ProcessRunner(isolation: start.isolation), lifecycle: lifecycle, deadEnds: deadEnds, plan: plan,
            clock: clock,
            instanceID: start.instanceID, hasRedrivePolicy: start.hasRedrivePolicy, retryBackoff: options.retryBackoff,
            ledger: start.ledger, maxReceiveCount: start.maxReceiveCount)
        let started = clock.now
        await withLedger(start.ledger, reason: { lifecycle.stopReason?.rawValue ?? "unknown" }) {
            await withDeleteBatcher(deletes) { await runSlots(processor, deadEnds: deadEnds, logger: logger) }
            let counts = lifecycle.counts
            logger.notice(
                "parallelizer stopped",
                metadata: [
                    "reason": "\(lifecycle.stopReason?.rawValue ?? "unknown")",
                    "seconds": "\((clock.now - started).seconds)",
                    "tasks.succeeded": "\(counts.succeeded)", "tasks.no_output": "\(counts.noOutput)",
                    "tasks.failed_will_retry": "\(counts.failed)", "tasks.given_up": "\(counts.givenUp)",
                    "tasks.released": "\(counts.released)", "messages.bad": "\(counts.badMessages)",
                    "bytes.in": "\(counts.bytesIn)", "bytes.out": "\(counts.bytesOut)",
                ])
        }
        await uploadLog(s3: start.s3, instanceID: start.instanceID, logger: logger)

        // A dead end met after another stop (a delete refused while draining) still exits 2, for systemd.
        if deadEnds.deadEnd != nil {
            if lifecycle.stopReason == .deadEnd { await endOfRun(afterDeadEnd: true, logger: logger) }
            return 2
        }
        switch lifecycle.stopReason {
        case .drained?: await endOfRun(afterDeadEnd: false, logger: logger)
        case .rebalanceRecommendation?: await endOfRun(afterDeadEnd: false, replaceMe: true, logger: logger)
        case .machineTrouble?, .badNode?:
            await endOfRun(afterDeadEnd: false, replaceMe: true, logger: logger)
            return 1
        case .queueUnreachable?: return 1
        default: break
        }
        return 0
    }

    /// The log file's end (every run of the daemon on this instance is appended to it) to
    /// `_logs/<instance-id>.log` in the output bucket, whatever ended the run: it outlives the instance, which may be
    /// gone a minute later (drained, a spot notice, a dead end), and `parallelizer logs` merges the fleet's. At most
    /// its last `logUploadLimit` bytes, within `logUploadDeadline` seconds: the power-off after it must not wait on a
    /// slow upload. A failure is a line in the log, not an error: the run's work is done by now.
    func uploadLog(s3: S3Client, instanceID: String, logger: Logger) async {
        guard !config.outputBucket.isEmpty, let bytes = Self.logTail(config.logFile, limit: Self.logUploadLimit) else {
            return
        }
        let key = "_logs/\(instanceID).log"
        let bucket = config.outputBucket
        let uploaded = await withTaskGroup(of: Bool?.self) { group in
            group.addTask {
                do {
                    _ = try await s3.putObject(
                        bucket: bucket, key: key, bytes: bytes, contentType: "text/plain", logger: logger)
                    return true
                } catch {
                    logger.notice("could not upload the log", metadata: ["s3.key": "\(key)", "error": "\(error)"])
                    return false
                }
            }
            group.addTask {
                try? await Task.sleep(nanoseconds: UInt64(Self.logUploadDeadline * 1_000_000_000))
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        switch uploaded {
        case true?: logger.info("log uploaded", metadata: ["s3.key": "\(key)", "bytes": "\(bytes.count)"])
        case nil:
            logger.notice(
                "log upload given up", metadata: ["s3.key": "\(key)", "after_s": "\(Self.logUploadDeadline)"])
        case false?: break
        }
    }

    static let logUploadLimit = 8 << 20
    static let logUploadDeadline = 60.0

    /// The last `limit` bytes of the file at `path`, from a line's start (a first line saying what was left out);
    /// nil when there is no such file.
    static func logTail(_ path: String, limit: Int) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        let size = Int(st.st_size)
        let from = max(0, size - limit)
        var bytes = [UInt8](repeating: 0, count: size - from)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes {
                pread(fd, $0.baseAddress! + done, $0.count - done, off_t(from + done))
            }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            done += n
        }
        bytes = Array(bytes.prefix(done))
        guard from > 0 else { return bytes }
        let cut = (bytes.firstIndex(of: 0x0a) ?? -1) + 1
        return Array("[... \(from + cut) earlier bytes of this log left out ...]\n".utf8) + bytes[cut...]
    }

    /// The slots and, beside them, the monitors; when a stop's grace runs out, the slots are cancelled.
    func runSlots<Q, S, R>(_ processor: MessageProcessor<Q, S, R>, deadEnds: DeadEnds, logger: Logger) async {
        let lifecycle = processor.lifecycle
        await withTaskGroup(of: Void.self) { daemon in
            if !options.once {
                daemon.addTask {
                    await watchForDrain(
                        processor.queue, lifecycle, ledger: processor.ledger, clock: clock,
                        logger: logger)
                }
            }
            if let imds = context.imds {
                daemon.addTask { await watchForSpot(imds, lifecycle, clock: clock, logger: logger) }
            }
            await withTaskGroup(of: SlotEvent.self) { slots in
                // `--once` is one message: one slot, whatever numThreads says.
                let count = options.once ? 1 : max(1, config.numThreads)
                for slot in 1...count {
                    let loop = SlotLoop(
                        slot: slot, processor: processor, once: options.once,
                        waitSeconds: options.receiveWaitSeconds, fixedBatch: options.receiveBatch,
                        receiveOutage: .milliseconds(Int(options.receiveOutageSeconds * 1000)),
                        prefetch: config.prefetch)
                    slots.addTask {
                        await loop.run(logger: logger)
                        return .slotEnded
                    }
                }
                slots.addTask {
                    do { try await lifecycle.waitForGraceEnd() } catch { return .slotEnded }
                    return .graceOver
                }
                var running = count
                while let event = await slots.next() {
                    switch event {
                    case .slotEnded:
                        running -= 1
                        if running == 0 { slots.cancelAll() }  // the grace timer is not needed any more
                    case .graceOver:
                        slots.cancelAll()  // running commands are killed, transfers aborted, messages released
                    }
                }
            }
            daemon.cancelAll()  // the monitors
        }
    }

    /// Exit status 2 (after the end of the run) for what no restart can fix, 1 for the rest.
    func startUpFailed(_ error: any Error, logger: Logger) async -> Int32 {
        switch error {
        case let deadEnd as DeadEnd:
            logger.critical("cannot start: \(deadEnd)", metadata: deadEnd.error.map { ["error": "\($0)"] } ?? [:])
        case let error as ConfigError:
            logger.critical("cannot start: \(error)", metadata: ["key": "\(error.key)"])
        default:
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            return 1
        }
        // The log of a run that could not start goes up too (when the output bucket takes it): the instance is
        // about to power off, and that log is the one an operator needs.
        if let s3 = try? S3Client(context: context) {
            var instanceID = hostName()
            if let imds = context.imds, let id = try? await imds.instanceID() { instanceID = id }
            await uploadLog(s3: s3, instanceID: instanceID, logger: logger)
        }
        await endOfRun(afterDeadEnd: true, logger: logger)
        return 2
    }
}

/// What ends in the slots' task group: a slot, or the stop's grace.
private enum SlotEvent { case slotEnded, graceOver }

/// Runs `body` with the ledger's writer going (when there is a ledger), then writes its last heartbeat with the
/// stop's `reason` and what is still buffered.
func withLedger(_ ledger: Ledger?, reason: @Sendable () -> String, _ body: () async -> Void) async {
    await ledger?.start()
    await body()
    await ledger?.finish(reason: reason())
}
