import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Logging
import TaskLedger

extension MessageProcessor {
    /// One attempt at one input, its events told to the books (`MessageBooks`), returned as its `AttemptOutcome`.
    func attempt(
        _ input: S3URI, message: SQSMessage, slot: Int, stage: CommandStage? = nil, lastInput: Bool = true,
        lastRun: Bool = false, logger base: Logger
    ) async -> AttemptOutcome {
        var logger = base
        logger[metadataKey: "task.key"] = "\(input.key)"
        if input.bucket != config.inputBucket { logger[metadataKey: "task.bucket"] = "\(input.bucket)" }
        let started = clock.now
        await emit(.taskStarted(input: input, attempt: message.receiveCount, slot: slot), message, logger: logger)
        let usage = UsageBox()
        var (outcome, bytesIn) = await run(
            input, slot: slot, message: message, stage: stage, lastInput: lastInput, lastRun: lastRun, usage: usage,
            logger: logger)
        // A command that failed on a full disk, which has room again now that its task folder is gone, filled it
        // itself: that is the task's failure, not this machine's (a hostile or runaway command must not make
        // worker after worker leave). A download that did not fit stays the machine's.
        if case .deferred(let reason, .disk) = outcome, NodeTrouble.fullDisk(under: config.workDir) == nil {
            outcome = .failed(
                TaskFailure(
                    input: input, reason: "\(reason); the disk has room again without this task's files: it filled it",
                    outcome: nil))
        }
        let seconds = (clock.now - started).seconds
        outcome = outcome.timed(seconds, usage: usage.usage)
        await emit(
            .taskEnded(
                outcome, input: input, attempt: message.receiveCount, seconds: seconds, bytesIn: bytesIn,
                usage: usage.usage, lastRun: lastRun),
            message, logger: logger)
        return outcome
    }

    /// Download, run, judge, upload, in a task folder of its own that is removed at the end whatever happened.
    /// Returns the outcome and the bytes downloaded.
    ///
    /// In a slot's pipeline (`stage`), the command waits for the slot's gate, and the download before it, being
    /// work not yet started, ends at a stop: the message is then released. The message keeps the gate from its
    /// first command until its `lastInput`'s command ends.
    func run(
        _ input: S3URI, slot: Int, message: SQSMessage, stage: CommandStage?, lastInput: Bool, lastRun: Bool,
        usage: UsageBox, logger: Logger
    ) async -> (AttemptOutcome, Int64) {
        let failed = { (reason: String, outcome: ProcessOutcome?, tail: String) -> AttemptOutcome in
            .failed(TaskFailure(input: input, reason: reason, outcome: outcome, stderrTail: tail))
        }
        let id = message.messageID.prefix(12).filter { $0.isLetter || $0.isNumber }
        let folderName = "\(slot)-\(id)-\(UInt32.random(in: 0..<UInt32.max))"
        let folder: TaskFolder
        do {
            folder = try TaskFolder.make(
                in: config.workDir + "/tasks", name: folderName, user: setting.user, checkpoint: config.checkpoint)
        } catch {
            if let trouble = NodeTrouble.reason(errno: error.errno, error.description) {
                return (.deferred(reason: trouble, scope: .machine), 0)
            }
            return (failed(error.description, nil, ""), 0)
        }
        // Every process the command started has ended by now (in a PID namespace, with the command itself).
        defer { folder.remove() }
        let data = folder.data
        let inputPath = data + "/" + TaskPaths.localName(forKey: input.key)
        let bytesIn: Int64
        // The version read: a checkpoint is of it alone.
        var inputETag: String?
        // Work not yet started (no command of this message has run) ends at a stop; a message whose commands have
        // begun finishes its inputs within the grace, as without a pipeline.
        let notStarted = stage.map { !$0.isHeld } ?? false
        do {
            let downloaded = try await download(input, to: inputPath, endingAtStop: notStarted, logger: logger)
            bytesIn = downloaded.size
            inputETag = downloaded.etag
        } catch {
            if Task.isCancelled || (notStarted && lifecycle.isStopping) { return (.interrupted, 0) }
            // The bucket answered that the key is not there: NoSuchKey, and only that (a bucket that is gone is
            // NoSuchBucket, also a 404; a 404 whose body was lost says neither, and is an ordinary failure, retried,
            // rather than a message given up at once).
            if error.httpStatus == 404 && error.code == "NoSuchKey" {
                return (.inputMissing(TaskFailure(input: input, reason: "\(error)", outcome: nil)), 0)
            }
            if let trouble = NodeTrouble.reason(error) { return (.deferred(reason: trouble, scope: .machine), 0) }
            // A throttle that outlasted the client's retries is a wait, not the task's failure.
            if error.isThrottle { return (.deferred(reason: "download: \(error)", scope: .throttle), 0) }
            return (failed("download failed: \(error)", nil, ""), 0)
        }
        await emit(.downloaded(bytes: bytesIn), message, logger: logger)
        // The last checkpoint goes back in while the folder is still the daemon's alone; it is the checkpoint of this
        // version of the input (its ETag), or none.
        let scratch = folder.path + "/checkpoint.manifest"
        if config.checkpoint {
            switch await checkpoints.restore(
                input, etag: inputETag, into: folder.checkpoint, scratch: scratch, logger: logger)
            {
            case .notNow(let why): return (.deferred(reason: why, scope: .throttle), bytesIn)
            case .machine(let why): return (.deferred(reason: why, scope: .disk), bytesIn)
            case .none, .restored: break
            }
        }
        // Only now does the run-as user get the data folder: nothing of theirs could reach it during the download.
        do {
            try folder.handOver(input: TaskPaths.localName(forKey: input.key), checkpoint: config.checkpoint)
        } catch {
            return (failed(error.description, nil, ""), bytesIn)
        }
        if Task.isCancelled { return (.interrupted, bytesIn) }

        var environment = setting.environment
        environment["PARALLELIZER_INPUT_BUCKET"] = input.bucket
        environment["PARALLELIZER_INPUT_KEY"] = input.key
        environment["PARALLELIZER_TASK_DIR"] = data
        // Unique to this attempt on any instance: for naming an output (`$$` is 1 for every command as root, each
        // the first process of its own PID namespace).
        environment["PARALLELIZER_TASK_ID"] = "\(instanceID)-\(folderName)"
        if config.checkpoint {
            // A stop before the command began: nothing new to save, and the last checkpoint stays as it is.
            if lifecycle.isStopping { return (.interrupted, bytesIn) }
            environment["PARALLELIZER_CHECKPOINT_DIR"] = folder.checkpoint
        }
        var command = CommandRun(
            argv: setting.program + [inputPath], environment: environment,
            directory: setting.environmentDirectory ?? data, stdout: folder.commandStdout,
            stderr: folder.commandStderr, user: setting.user, timeout: config.taskTimeout, privateTmp: folder.tmp)
        if config.checkpoint { command.killGrace = Double(config.checkpointGrace) }
        command.usage = usage
        // The task's own cgroup, with its limits: a limit that cannot be set here is this machine's trouble, never a
        // command run without it.
        if let cgroups = setting.cgroups {
            do {
                command.cgroup = try cgroups.make(task: folderName)
            } catch {
                return (.deferred(reason: "the task's cgroup cannot be made: \(error)", scope: .machine), bytesIn)
            }
        }
        defer { command.cgroup?.remove() }
        // The next command of the slot starts once this one's output is judged, while the output goes up; unless
        // the output may be a file the next command can reach (in the shared environment, or a hard link to one):
        // then its upload is part of the slot's turn.
        let step = await withCommandSlot(stage, keep: !lastInput, lastRun: lastRun, logger: logger) {
            () async -> CommandStep in
            let step = await runCommand(command, input: input, message: message, folder: folder, logger: logger)
            if case .output(let output) = step, !output.taskOwn {
                return .ended(await publish(output, input: input, message: message, logger: logger))
            }
            return step
        }
        let outcome: AttemptOutcome
        switch step {
        case nil: return (.interrupted, bytesIn)
        case .ended(let ended)?: outcome = ended
        case .output(let output)?: outcome = await publish(output, input: input, message: message, logger: logger)
        }
        if config.checkpoint {
            switch outcome {
            case .uploaded, .noOutput:
                // Done: its checkpoint has served.
                await checkpoints.remove(input, scratch: scratch, logger: logger)
            case .interrupted where !Task.isCancelled:
                // Stopped mid-command: what it wrote goes up before the message is released.
                // Whatever the command left running goes first (without a PID namespace a child may outlive it):
                // nothing writes the folder while it is saved.
                if command.cgroup?.killAll() == true { usage.markKilled() }
                _ = await checkpoints.save(
                    input, etag: inputETag, from: folder.checkpoint, owner: setting.user?.uid,
                    generation: "\(instanceID)-\(Int(Date().timeIntervalSince1970))-\(folderName)",
                    killed: usage.killed, scratch: scratch, logger: logger)
            default: break
            }
        }
        return (outcome, bytesIn)
    }

    /// What a command's turn in the slot left: an outcome, or an output to upload.
    enum CommandStep: Sendable {
        case ended(AttemptOutcome)
        case output(JudgedOutput)
    }

    /// The file a command named as its output, opened and checked (`OutputJudge`); `publish` closes it.
    struct JudgedOutput: Sendable {
        var descriptor: Int32
        var name: String
        var process: ProcessOutcome
        /// Whether only this task can reach it: its data folder's own file, with no other name.
        var taskOwn: Bool
    }

    /// Runs `body` (a command, and what must follow it before the slot's next command may start) holding the slot's
    /// command gate (`CommandStage`); without a pipeline, at once. Nil when the message was turned away before it got
    /// the gate: by a stop, or by a wait past the plan's prefetch horizon (a free worker had better take it). A message
    /// on its last run waits for as long as it takes: a release would spend that attempt unrun.
    ///
    /// With `keep` (more of the message's inputs to come), the message keeps the gate after `body`; the end of its
    /// handling (`attempt(_:message:...)`) hands it on whatever happened.
    func withCommandSlot<T>(
        _ stage: CommandStage?, keep: Bool, lastRun: Bool, logger: Logger, _ body: () async -> T
    ) async -> T? {
        guard let stage else { return await body() }
        if !stage.isHeld {
            let clock = self.clock
            let limit: Duration? = lastRun ? nil : .milliseconds(Int(plan.prefetchHorizon * 1000))
            let wait = await lifecycle.cancellingAtStop { await stage.enter(within: limit, clock: clock) }
            if wait == .timedOut && !lifecycle.isStopping {
                logger.notice(
                    "waited \(Int(plan.prefetchHorizon)) s for the slot's running command; released for a free worker")
            }
            if wait != .entered || lifecycle.isStopping {
                stage.leave()
                return nil
            }
            stage.reached.fire()
        }
        let result = await body()
        if !keep { stage.leave() }
        return result
    }

    /// Runs the command. With checkpoints, a stop ends it at once (SIGTERM, then SIGKILL after `checkpointGrace`), so
    /// that its checkpoint and the upload fit in the stop's grace; without, a stop lets it finish within the grace.
    func runStoppable(_ command: CommandRun) async throws(SpawnError) -> ProcessOutcome {
        guard config.checkpoint else { return try await runner.run(command) }
        let runner = self.runner
        let result = await lifecycle.cancellingAtStop { () async -> Result<ProcessOutcome, SpawnError> in
            do throws(SpawnError) { return .success(try await runner.run(command)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// The command's run and the judgement of what it printed: the part of a task that holds the slot.
    func runCommand(
        _ command: CommandRun, input: S3URI, message: SQSMessage, folder: TaskFolder, logger: Logger
    ) async -> CommandStep {
        let failed = { (reason: String, outcome: ProcessOutcome?, tail: String) -> CommandStep in
            .ended(.failed(TaskFailure(input: input, reason: reason, outcome: outcome, stderrTail: tail)))
        }
        // The IMDS fence, checked on the machine as it is now: a flushed ruleset would hand the command the role.
        if let fence = setting.fence {
            do {
                try await fence.ensure(logger: logger)
            } catch {
                return .ended(.deferred(reason: "the IMDS fence cannot be put back: \(error)", scope: .machine))
            }
        }
        // The command's clock starts now, not at the download: `taskTimeout` is the command's, and the controller's
        // "past its taskTimeout" reads this.
        await emit(.commandStarted(input: input, attempt: message.receiveCount), message, logger: logger)
        let outcome: ProcessOutcome
        do {
            outcome = try await runStoppable(command)
        } catch {
            await emit(.commandEnded(input: input, attempt: message.receiveCount), message, logger: logger)
            if let trouble = NodeTrouble.reason(errno: error.errno, error.description) {
                return .ended(.deferred(reason: trouble, scope: .machine))
            }
            return failed("\(error)", nil, "")
        }
        await emit(.commandEnded(input: input, attempt: message.receiveCount), message, logger: logger)
        if outcome == .interrupted { return .ended(.interrupted) }
        // A command that failed while the work folder's disk was full most likely failed of it.
        if !outcome.succeeded, let full = NodeTrouble.fullDisk(under: folder.data) {
            return .ended(.deferred(reason: "the command failed (\(outcome.summary)) and \(full)", scope: .disk))
        }
        guard outcome.succeeded else {
            var reason =
                outcome == .timedOut
                ? "the command ran past taskTimeout (\(config.taskTimeout ?? 0) s)"
                : "the command failed (\(outcome.summary))"
            if let used = command.usage?.usage, used.outOfMemory, let limit = config.limits.memoryMax {
                reason =
                    "out of memory (limit \(ResourceLimits.readable(limit))), peak \(used.peakMemoryBytes.map(ResourceLimits.readable) ?? "unknown"): \(reason)"
            }
            return failed(reason, outcome, folder.stderrTail(bytes: 64 << 10))
        }
        // The name is resolved as the command meant it (from its working directory), and must lead to a regular
        // file in the data folder or the environment, without a link (and the run-as user's own); it is opened
        // once, and uploaded from there.
        let line = OutputJudge.lastLine(of: folder.stdout)
        let dataFolder = LocalFile.realPath(folder.data) ?? folder.data
        let workingDirectory = LocalFile.realPath(command.directory) ?? command.directory
        let folders = [dataFolder] + (setting.environmentDirectory.map { [$0] } ?? [])
        let verdict = OutputJudge.judge(
            line: line, workingDirectory: workingDirectory, folders: folders, owner: setting.user?.uid)
        switch verdict {
        case .none:
            return .ended(.noOutput)
        case .rejected(let why):
            // A command may print anything as its last line: keep the reason readable.
            let reason =
                "the command's output line names no usable file: "
                + (why.count > 300 ? String(why.prefix(300)) + "…" : why)
            return failed(reason, outcome, folder.stderrTail(bytes: 64 << 10))
        case .file(let descriptor, let name):
            let taskOwn =
                setting.environmentDirectory == nil
                || Self.isTaskOwn(verdict, line: line, dataFolder: dataFolder, workingDirectory: workingDirectory)
            return .output(JudgedOutput(descriptor: descriptor, name: name, process: outcome, taskOwn: taskOwn))
        }
    }

    /// Uploads a judged output under its key (`publish(_:to:identity:logger:)`), and closes it.
    func publish(_ output: JudgedOutput, input: S3URI, message: SQSMessage, logger: Logger) async -> AttemptOutcome {
        defer { close(output.descriptor) }
        let key = TaskPaths.outputKey(
            inputKey: input.key, inputPrefix: config.inputPrefix, outputPrefix: config.outputPrefix,
            outputName: output.name)
        let object = S3URI(bucket: config.outputBucket, key: key)
        let published: Published
        do {
            // Cancelled when a stop's grace runs out (a multipart upload is then aborted).
            published = try await publish(
                output.descriptor, to: object, identity: OutputIdentity(input: input, messageID: message.messageID),
                logger: logger)
        } catch {
            if Task.isCancelled { return .interrupted }
            if let trouble = NodeTrouble.reason(error) { return .deferred(reason: trouble, scope: .machine) }
            if error.isThrottle { return .deferred(reason: "upload: \(error)", scope: .throttle) }
            return .failed(TaskFailure(input: input, reason: "upload failed: \(error)", outcome: output.process))
        }
        let bytes = LocalFile.size(.descriptor(output.descriptor)) ?? 0
        switch published {
        case .uploaded:
            return .uploaded(key: key, bytes: bytes)
        case .landedBefore:
            logger.notice(
                "the output of this message's earlier receive is there already: done", metadata: ["s3.key": "\(key)"])
            return .uploaded(key: key, bytes: bytes)
        case .taken(let owner):
            let reason =
                "the output key \(object) holds \(owner): not overwritten (two inputs name one output; "
                + "give each its own name, e.g. with PARALLELIZER_TASK_ID)"
            return .outputTaken(TaskFailure(input: input, reason: reason, outcome: output.process))
        }
    }
}

extension MessageProcessor {
    /// Whether the judged output is this task's own: opened in its data folder, with no other name (a hard link
    /// would let a file of the shared environment pass for one).
    static func isTaskOwn(
        _ verdict: OutputJudge.Verdict, line: [UInt8]?, dataFolder: String, workingDirectory: String
    ) -> Bool {
        guard case .file(let descriptor, _) = verdict,
            OutputJudge.names(line, inside: dataFolder, workingDirectory: workingDirectory)
        else { return false }
        var st = stat()
        return fstat(descriptor, &st) == 0 && st.st_nlink == 1
    }

    /// The input's download; with `endingAtStop` (a download ahead of its command), a stop cancels it.
    func download(_ input: S3URI, to path: String, endingAtStop: Bool, logger: Logger) async throws(AWSError)
        -> Downloaded
    {
        guard endingAtStop else { return try await store.download(input, to: path, logger: logger) }
        let store = self.store
        let result = await lifecycle.cancellingAtStop { () -> Result<Downloaded, AWSError> in
            do throws(AWSError) {
                return .success(try await store.download(input, to: path, logger: logger))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }
}

extension Ledger {
    /// One task attempt's line in the ledger.
    func record(
        _ outcome: AttemptOutcome, input: S3URI, attempt: Int, seconds: Double, bytesIn: Int64, usage: TaskUsage?,
        messageID: String? = nil
    ) {
        // What each outcome writes; what the command used, except for one cut short at a stop.
        let (state, bytesOut, exitStatus, outputKey, reason, used):
            (Outcome, Int64, String, String?, String?, TaskUsage?)
        switch outcome {
        case .uploaded(let key, let bytes):
            (state, bytesOut, exitStatus, outputKey, reason, used) = (.done, bytes, "exit 0", key, nil, usage)
        case .noOutput:
            (state, bytesOut, exitStatus, outputKey, reason, used) = (.done, 0, "exit 0", nil, "no output named", usage)
        case .failed(let failure), .inputMissing(let failure), .outputTaken(let failure):
            (state, bytesOut, exitStatus, outputKey, reason, used) = (
                .failed, 0, failure.outcome?.summary ?? "none", nil, failure.reason, usage
            )
        case .interrupted:
            (state, bytesOut, exitStatus, outputKey, reason, used) = (
                .released, 0, "interrupted", nil, "released at shutdown", nil
            )
        case .deferred(let why, _):
            (state, bytesOut, exitStatus, outputKey, reason, used) = (
                .released, 0, "none", nil, "deferred: \(why)", usage
            )
        }
        taskEnded(
            inputKey: input.key, attempt: attempt, outcome: state, seconds: seconds, bytesIn: bytesIn,
            bytesOut: bytesOut, exitStatus: exitStatus, outputKey: outputKey, reason: reason,
            peakMemoryBytes: used?.peakMemoryBytes, cpuSeconds: used?.cpuSeconds, messageID: messageID)
    }
}
