import AWSCore
import AWSServices
import Dispatch
import FoundationEssentials
@preconcurrency import Glibc
import Logging
import TaskLedger

/// `parallelizer run`: slots that receive, process and settle messages until the queue is drained or a stop is
/// asked for (SIGTERM/SIGINT, a spot interruption notice, `--once`); then, after a drain, the shutdown command.
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

    public init(config: WorkerConfig, context: AWSContext, options: Options) {
        self.config = config
        self.context = context
        self.options = options
    }

    /// Runs to the end and returns the process exit code: 0, 2 for a dead end (a configuration error that no
    /// restart can fix), 1 for an error that a restart may get past.
    public func run(logger: Logger) async -> Int32 {
        let lifecycle = Lifecycle(grace: Double(config.shutdownGrace))
        let signals = installSignalHandlers(lifecycle, logger: logger)
        defer { signals.forEach { $0.cancel() } }
        let deadEnds = DeadEnds { deadEnd in
            var metadata: Logger.Metadata = [:]
            if let error = deadEnd.error { metadata["error"] = "\(error)" }
            logger.critical("cannot go on: \(deadEnd)", metadata: metadata)
            lifecycle.requestStop(.deadEnd)
        }
        let handler: MessageHandler
        do {
            handler = try await prepare(lifecycle: lifecycle, deadEnds: deadEnds, logger: logger)
        } catch let deadEnd as DeadEnd {
            var metadata: Logger.Metadata = [:]
            if let error = deadEnd.error { metadata["error"] = "\(error)" }
            logger.critical("cannot start: \(deadEnd)", metadata: metadata)
            await endOfRun(afterDeadEnd: true, logger: logger)
            return 2
        } catch let error as ConfigError {
            logger.critical("cannot start: \(error)", metadata: ["key": "\(error.key)"])
            await endOfRun(afterDeadEnd: true, logger: logger)
            return 2
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            return 1
        }
        logger.notice("parallelizer started", metadata: [
            "queue": "\(config.queueURL)", "slots": "\(config.numThreads)", "instance": "\(handler.instanceID)",
            "version": "\(Version.current)", "input_bucket": "\(config.inputBucket)", "output_bucket": "\(config.outputBucket)",
        ])
        let started = ContinuousClock.now
        await withTaskGroup(of: Void.self) { group in
            for slot in 1...max(1, config.numThreads) {
                group.addTask {
                    await runSlot(slot, handler: handler, lifecycle: lifecycle, deadEnds: deadEnds, logger: logger)
                }
            }
            let monitors = Task {
                await withTaskGroup(of: Void.self) { inner in
                    if !options.once {
                        inner.addTask { await watchForDrain(lifecycle, deadEnds: deadEnds, logger: logger) }
                    }
                    if let imds = context.imds { inner.addTask { await watchForSpot(imds, lifecycle, logger: logger) } }
                }
            }
            await group.waitForAll()
            monitors.cancel()
            await monitors.value
        }
        // Finished messages still waiting for their batch: deleted before the process ends.
        await handler.deletes.finish()
        let counts = lifecycle.counts
        logger.notice("parallelizer stopped", metadata: [
            "reason": "\(lifecycle.stopReason?.rawValue ?? "unknown")", "seconds": "\((ContinuousClock.now - started).seconds)",
            "tasks.succeeded": "\(counts.succeeded)", "tasks.no_output": "\(counts.noOutput)",
            "tasks.failed_will_retry": "\(counts.failed)", "tasks.given_up": "\(counts.givenUp)",
            "tasks.released": "\(counts.released)", "messages.bad": "\(counts.badMessages)",
            "bytes.in": "\(counts.bytesIn)", "bytes.out": "\(counts.bytesOut)",
        ])
        await handler.ledger?.finish(reason: lifecycle.stopReason?.rawValue ?? "unknown")
        // A dead end met after another stop (a delete refused while draining) still exits 2, for systemd.
        if deadEnds.deadEnd != nil {
            if lifecycle.stopReason == .deadEnd { await endOfRun(afterDeadEnd: true, logger: logger) }
            return 2
        }
        switch lifecycle.stopReason {
        case .drained?:
            await endOfRun(afterDeadEnd: false, logger: logger)
        case .queueUnreachable?:
            return 1
        default:
            break
        }
        return 0
    }

    /// After a drain or a dead end, when `shouldShutdown` (and not `--once`): leaves the Auto Scaling group (so it
    /// does not start a replacement that would meet the same end) and runs the shutdown command, so that neither a
    /// finished nor a misconfigured fleet goes on billing.
    func endOfRun(afterDeadEnd deadEnd: Bool, logger: Logger) async {
        guard config.shouldShutdown, !options.once else { return }
        // The instance's id from IMDS: nil when this is not an EC2 instance (a laptop, a CI runner).
        var instanceID: String?
        if let imds = context.imds { instanceID = try? await imds.instanceID() }
        guard instanceID != nil || config.shutdownCommandGiven else {
            logger.notice("not on an EC2 instance (IMDS gave no instance id): the default shutdown command is not run")
            return
        }
        if let group = config.autoScalingGroup {
            let left = if let instanceID { await leaveGroup(group, instanceID: instanceID, logger: logger) } else { false }
            if deadEnd && !left {
                // Powered off, it would be replaced by one that meets the same end, again and again.
                logger.error("staying up instead of powering off: the Auto Scaling group would replace this instance with one that meets the same end",
                             metadata: ["group": "\(group)"])
                return
            }
        }
        await runShutdownCommand(logger: logger)
    }

    /// Leaves the Auto Scaling group with its desired capacity lowered by one, so the group does not start a
    /// replacement that would find no work (and bill until someone notices). The instance is terminated by the
    /// group; the shutdown command still runs, in case the call did not get through. Returns whether it left.
    func leaveGroup(_ group: String, instanceID: String, logger: Logger) async -> Bool {
        do {
            let client = try AutoScalingClient(context: context)  // the instance's own region
            try await client.terminateInstanceInGroup(instanceID, decrementDesiredCapacity: true, logger: logger)
            logger.notice("left the Auto Scaling group: it shrinks instead of replacing this instance",
                          metadata: ["group": "\(group)", "instance": "\(instanceID)"])
            return true
        } catch {
            logger.error("cannot leave the Auto Scaling group: it will start a replacement",
                         metadata: ["group": "\(group)", "instance": "\(instanceID)", "error": "\(error)"])
            return false
        }
    }

    // MARK: - Start-up

    /// Everything before the first receive. Throws `DeadEnd` or `ConfigError` for what no restart can fix (exit 2),
    /// anything else for what one may (exit 1). The checks take a second at most: a misconfigured fleet ends before
    /// it takes any message.
    func prepare(lifecycle: Lifecycle, deadEnds: DeadEnds, logger: Logger) async throws -> MessageHandler {
        for dir in [config.workDir, config.workDir + "/tasks"] {
            if mkdir(dir, 0o700) != 0 && errno != EEXIST {
                throw ConfigError(key: "workDir", message: "cannot create \(dir): \(String(cString: strerror(errno)))")
            }
        }
        _ = chmod(config.workDir, 0o700)
        // Task folders left by a killed run hold nothing worth keeping: their messages come back by themselves.
        LocalFile.removeTree(config.workDir + "/tasks")
        _ = mkdir(config.workDir + "/tasks", 0o700)

        let s3 = try S3Client(context: context)
        let sqs = SQSClient(context: context)
        // The queue answers (and says whether it has a dead-letter queue).
        let attributes: [String: String]
        do {
            attributes = try await Self.checking(logger: logger) { () throws(AWSError) in
                try await sqs.getQueueAttributes(queueURL: config.queueURL, names: ["All"], logger: logger)
            }
        } catch {
            if let problem = error.setupProblem {
                throw DeadEnd.setup(problem, action: "sqs:GetQueueAttributes", resource: config.queueURL, error: error)
            }
            throw StartUpError(message: "the queue cannot be read: \(error)")
        }
        let hasRedrive = attributes["RedrivePolicy"].map { !$0.isEmpty } ?? false
        var instanceID = hostName()
        if let imds = context.imds, let id = try? await imds.instanceID() { instanceID = id }
        try await checkOutputBucket(s3, instanceID: instanceID, logger: logger)

        var user: RunAsUser?
        if let name = config.runAsUser {
            guard let found = RunAsUser.lookup(name) else {
                throw ConfigError(key: "runAsUser", message: "no such user '\(name)'")
            }
            guard getuid() == 0 else { throw ConfigError(key: "runAsUser", message: "switching users needs root") }
            user = found
            // The user may pass through (not list) the work dir to reach its own task folders.
            _ = chown(config.workDir, 0, 0)
            _ = chmod(config.workDir, 0o711)
            _ = chmod(config.workDir + "/tasks", 0o711)
        }
        var environmentDirectory: String?
        if let bucket = config.environmentBucket, let zip = config.environmentZip {
            do {
                environmentDirectory = try await EnvironmentArchive(s3: s3).prepare(
                    bucket: bucket, key: zip, prefix: config.environmentPrefix, workDir: config.workDir, logger: logger)
            } catch let error as AWSError {
                let resource = "s3://\(bucket)/\(zip)"
                if let problem = error.setupProblem {
                    throw DeadEnd.setup(problem, action: "s3:GetObject", resource: resource, error: error)
                }
                if error.httpStatus == 404 {
                    throw DeadEnd(what: "the environment archive \(resource) does not exist",
                                  fix: "upload it, or correct environmentBucket and environmentZip", error: error)
                }
                throw StartUpError(message: "the environment archive cannot be fetched: \(error)")
            } catch let failure as EnvironmentArchive.Failure {
                throw ConfigError(key: "environmentZip", message: failure.message)
            }
        }
        // Resolved once: a relative name against the environment (or the daemon's working folder), a bare name on
        // PATH too. A command that cannot be found would fail every task, so that stops start-up instead.
        let environment = commandEnvironment(user: user)
        let base = environmentDirectory ?? currentDirectory()
        guard let program = ProcessRunner.resolve(config.analysisProgram[0], in: base, path: environment["PATH"] ?? "") else {
            throw ConfigError(key: "analysisProgram", message: "'\(config.analysisProgram[0])' was not found in \(base) or on PATH")
        }
        let queueURL = config.queueURL
        let deletes = DeleteBatcher(client: sqs, queueURL: queueURL,
                                    linger: DeleteBatcher.linger(visibilityTimeout: config.visibilityTimeout)) { id, error in
            if let error {
                deadEnds.failed(.deleteMessage, resource: queueURL, subject: id, error: error)
            } else {
                deadEnds.succeeded(.deleteMessage)
            }
        }
        var handler = MessageHandler(
            config: config, program: [program] + config.analysisProgram.dropFirst(), s3: s3, sqs: sqs,
            deletes: deletes, lifecycle: lifecycle, runner: ProcessRunner(),
            environmentDirectory: environmentDirectory, commandEnvironment: environment,
            user: user, instanceID: instanceID, hasRedrivePolicy: hasRedrive, deadEnds: deadEnds,
            retryBackoff: options.retryBackoff)
        if let table = config.ledgerTable {
            // Not checked here: a missing or throttled table must not stop the work, only be reported.
            let dynamo = try DynamoDBClient(context: context, region: SQSClient.region(ofQueueURL: config.queueURL))
            var ledgerLogger = logger
            ledgerLogger[metadataKey: "ledger.table"] = "\(table)"
            let ledger = Ledger(client: dynamo, table: table, queueURL: config.queueURL, instanceID: instanceID,
                                settings: options.ledger, logger: ledgerLogger)
            await ledger.start()
            handler.ledger = ledger
        }
        return handler
    }

    /// Runs a start-up check. Refused credentials (or none) are tried again for a few seconds first: at boot, IMDS
    /// may not serve the role's keys yet, and IAM takes seconds to know a role that was just made.
    static func checking<T>(logger: Logger, _ call: () async throws(AWSError) -> T) async throws(AWSError) -> T {
        let patience = ContinuousClock.now + .seconds(5)
        while true {
            do {
                return try await call()
            } catch where [.noCredentials, .credentialsRefused].contains(error.setupProblem) && ContinuousClock.now < patience {
                logger.info("credentials not accepted yet; trying again", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// The output bucket exists and takes writes: a multipart upload begun and aborted at once needs only the
    /// permissions the work needs (`s3:PutObject`, `s3:AbortMultipartUpload`) and leaves nothing behind, where a
    /// probe object would stay among the outputs.
    func checkOutputBucket(_ s3: S3Client, instanceID: String, logger: Logger) async throws {
        let bucket = config.outputBucket
        let key = config.outputPrefix + "_parallelizer/write-check-" + instanceID
        let uploadID: String
        do {
            uploadID = try await Self.checking(logger: logger) { () throws(AWSError) in
                try await s3.createMultipartUpload(bucket: bucket, key: key, logger: logger)
            }
        } catch {
            if let problem = error.setupProblem {
                throw DeadEnd.setup(problem, action: "s3:PutObject", resource: "s3://\(bucket)", error: error)
            }
            throw StartUpError(message: "the output bucket cannot be checked: \(error)")
        }
        do {
            try await s3.abortMultipartUpload(bucket: bucket, key: key, uploadID: uploadID, logger: logger)
        } catch {
            logger.warning("the output bucket's write check could not abort its upload; the bucket's lifecycle rule removes it",
                           metadata: ["s3.key": "\(key)", "error": "\(error)"])
        }
    }

    /// The command's environment: the daemon's, without AWS credentials unless `passCredentials`.
    func commandEnvironment(user: RunAsUser?) -> [String: String] {
        var environment = context.environment
        if !config.passCredentials {
            for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                         "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_PROFILE"] {
                environment.removeValue(forKey: name)
            }
            for name in environment.keys where name.hasPrefix("PARALLELIZER_") { environment.removeValue(forKey: name) }
        }
        if environment["PATH"] == nil { environment["PATH"] = "/usr/local/bin:/usr/bin:/bin" }
        if let user {
            environment["HOME"] = user.home
            environment["USER"] = user.name
            environment["LOGNAME"] = user.name
        }
        return environment
    }

    // MARK: - Slots

    func runSlot(_ slot: Int, handler: MessageHandler, lifecycle: Lifecycle, deadEnds: DeadEnds,
                 logger baseLogger: Logger) async {
        var logger = baseLogger
        logger[metadataKey: "slot"] = "\(slot)"
        var failures = 0
        var receives = 0
        var failingSince: ContinuousClock.Instant?
        var sizer = ReceiveSizer(visibilityTimeout: config.visibilityTimeout)
        while !lifecycle.isStopping {
            let count = options.once ? 1 : options.receiveBatch ?? sizer.batchSize
            let receive = Task {
                try await handler.sqs.receiveMessages(queueURL: config.queueURL, maxMessages: count,
                                                      waitSeconds: options.receiveWaitSeconds,
                                                      visibilityTimeout: config.visibilityTimeout, logger: logger)
            }
            guard lifecycle.registerReceive(slot: slot, cancel: { receive.cancel() }) else {
                receive.cancel()
                if case .success(let messages) = await receive.result, !messages.isEmpty {
                    await handler.release(messages, reason: "stopping before it started", logger: logger)
                }
                break
            }
            let result = await receive.result
            lifecycle.unregisterReceive(slot: slot)
            receives += 1
            switch result {
            case .failure(let error):
                if lifecycle.isStopping { break }
                failures += 1
                let awsError = error as? AWSError
                if let awsError {
                    // Each receive is a call of its own: three refused in a row end the daemon (DeadEnds).
                    deadEnds.failed(.receive, resource: config.queueURL, subject: "\(slot)-\(receives)", error: awsError)
                    if lifecycle.isStopping { break }
                }
                // Only errors that may pass make an outage; the others are counted above.
                let since = awsError?.isRetryable == false ? nil : failingSince ?? .now
                failingSince = since
                if let since, (ContinuousClock.now - since).seconds >= options.receiveOutageSeconds {
                    if lifecycle.requestStop(.queueUnreachable) {
                        logger.critical("""
                            cannot go on: the queue has not answered a receive for \(Int(options.receiveOutageSeconds)) s; \
                            exiting for systemd to start the daemon again
                            """, metadata: ["error": "\(error)"])
                    }
                    break
                }
                let delay = min(60.0, 1.0 * Double(1 << min(failures, 6))) * Double.random(in: 0.5...1)
                logger.warning("receive failed; trying again", metadata: ["error": "\(error)", "retry.delay_s": "\(Int(delay))"])
                await lifecycle.sleepUnlessStopping(seconds: delay)
            case .success(let messages):
                failures = 0
                failingSince = nil
                deadEnds.succeeded(.receive)
                if messages.isEmpty {
                    lifecycle.emptyPoll()
                    // --once means at most one message: an empty poll ends the run too.
                    if options.once { lifecycle.requestStop(.once) }
                    continue
                }
                let held = HeldMessages(messages, receivedAt: .now, visibilityTimeout: config.visibilityTimeout) {
                    [logger] late in
                    await handler.release(late, reason: "held too long: the slot is busier than expected", logger: logger)
                }
                while !lifecycle.isStopping, let message = held.next() {
                    let started = ContinuousClock.now
                    await handler.handle(message, receivedAt: held.receivedAt, slot: slot, logger: logger)
                    sizer.record(seconds: (ContinuousClock.now - started).seconds)
                }
                let left = held.takeAll()
                if !left.isEmpty { await handler.release(left, reason: "stopping before it started", logger: logger) }
                if options.once { lifecycle.requestStop(.once) }
            }
        }
    }

    // MARK: - Monitors

    /// Drained means: no slot has had work for `idleTimeout`, their long polls came back empty, and the queue
    /// reports nothing visible, in flight or delayed on two checks in a row. Messages in flight on other
    /// instances keep this worker waiting: they may fail and come back.
    func watchForDrain(_ lifecycle: Lifecycle, deadEnds: DeadEnds, logger: Logger) async {
        let sqs = SQSClient(context: context)
        let interval = max(1, min(5, config.idleTimeout / 3))
        var zeroChecks = 0
        var checks = 0
        while !Task.isCancelled && !lifecycle.isStopping {
            try? await Task.sleep(nanoseconds: UInt64(interval) * 1_000_000_000)
            guard lifecycle.idle(for: config.idleTimeout) else {
                zeroChecks = 0
                continue
            }
            checks += 1
            do {
                let total = try await sqs.messageCounts(queueURL: config.queueURL, logger: logger).total
                deadEnds.succeeded(.queueAttributes)
                zeroChecks = total == 0 ? zeroChecks + 1 : 0
                if total > 0 {
                    logger.debug("idle, but the queue still has messages", metadata: ["queue.messages": "\(total)"])
                }
            } catch {
                logger.warning("cannot read the queue's counts", metadata: ["error": "\(error)"])
                deadEnds.failed(.queueAttributes, resource: config.queueURL, subject: "check-\(checks)", error: error)
                zeroChecks = 0
            }
            if zeroChecks >= 2 {
                logger.notice("queue drained", metadata: ["idle_seconds": "\(config.idleTimeout)"])
                lifecycle.requestStop(.drained)
            }
        }
    }

    /// Polls IMDS for a spot interruption notice; on one, drains as for SIGTERM, inside the two-minute warning.
    func watchForSpot(_ imds: IMDSClient, _ lifecycle: Lifecycle, logger: Logger) async {
        while !Task.isCancelled && !lifecycle.isStopping {
            if let action = try? await imds.spotInstanceAction() {
                logger.warning("spot interruption notice: draining", metadata: [
                    "spot.action": "\(action.action)", "spot.time": "\(action.time)"])
                lifecycle.requestStop(.spotInterruption)
                return
            }
            try? await Task.sleep(nanoseconds: UInt64(options.spotPollSeconds * 1e9))
        }
    }

    func installSignalHandlers(_ lifecycle: Lifecycle, logger: Logger) -> [DispatchSourceSignal] {
        [SIGTERM, SIGINT].map { number in
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
            source.setEventHandler {
                logger.notice("stop requested: finishing running tasks, taking no new ones", metadata: [
                    "signal": "\(number == SIGTERM ? "SIGTERM" : "SIGINT")", "grace_seconds": "\(config.shutdownGrace)"])
                lifecycle.requestStop(.signal)
            }
            source.resume()
            return source
        }
    }

    func runShutdownCommand(logger: Logger) async {
        let argv = config.shutdownCommand
        guard let program = ProcessRunner.resolve(argv[0], in: "/", path: context.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin")
            ?? ProcessRunner.resolve(argv[0], in: "/", path: "/usr/sbin:/sbin:/usr/bin:/bin")
        else {
            logger.error("shutdown command not found", metadata: ["command": "\(argv.joined(separator: " "))"])
            return
        }
        logger.notice("running the shutdown command", metadata: ["command": "\(argv.joined(separator: " "))"])
        let out = config.workDir + "/shutdown.log"
        do {
            let outcome = try await ProcessRunner().run(argv: [program] + argv.dropFirst(), environment: context.environment,
                                                        directory: "/", stdoutPath: out, stderrPath: out, user: nil,
                                                        timeout: 120, stop: { false })
            if !outcome.succeeded {
                logger.error("the shutdown command failed", metadata: ["exit": "\(outcome.summary)"])
            }
        } catch {
            logger.error("cannot run the shutdown command", metadata: ["error": "\(error)"])
        }
    }
}

/// A start-up failure that a later start may get past (the network, a server error): exit status 1.
struct StartUpError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}

func currentDirectory() -> String {
    guard let cwd = getcwd(nil, 0) else { return "/" }
    defer { free(cwd) }
    return String(cString: cwd)
}

func hostName() -> String {
    var buffer = [UInt8](repeating: 0, count: 256)
    buffer.withUnsafeMutableBufferPointer { raw in
        raw.withMemoryRebound(to: CChar.self) { _ = gethostname($0.baseAddress!, $0.count - 1) }
    }
    return String(decoding: buffer.prefix { $0 != 0 }, as: UTF8.self)
}
