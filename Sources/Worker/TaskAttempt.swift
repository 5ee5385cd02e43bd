import AWSCore
import AWSServices
import FoundationEssentials
@preconcurrency import Glibc
import Logging
import TaskLedger

extension MessageProcessor {
    /// One attempt at one input: logged, written to the ledger, and returned as its `AttemptOutcome`.
    func attempt(
        _ input: S3URI, message: SQSMessage, slot: Int, stage: CommandStage? = nil, lastInput: Bool = true,
        lastRun: Bool = false, logger base: Logger
    ) async -> AttemptOutcome {
        var logger = base
        logger[metadataKey: "task.key"] = "\(input.key)"
        if input.bucket != config.inputBucket { logger[metadataKey: "task.bucket"] = "\(input.bucket)" }
        let started = clock.now
        logger.info("task start", metadata: ["task.attempt": "\(message.receiveCount)"])
        await ledger?.taskStarted(
            inputKey: input.key, attempt: message.receiveCount, slot: slot, messageID: message.messageID)
        var (outcome, bytesIn) = await run(
            input, slot: slot, message: message, stage: stage, lastInput: lastInput, lastRun: lastRun, logger: logger)
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
        await ledger?.record(outcome, input: input, attempt: message.receiveCount, seconds: seconds, bytesIn: bytesIn)
        switch outcome {
        case .uploaded(let key, let bytes):
            lifecycle.count {
                $0.succeeded += 1
                $0.bytesOut += bytes
            }
            logger.info(
                "task done",
                metadata: [
                    "task.seconds": "\(seconds)", "task.output": "\(key)",
                    "task.bytes_out": "\(bytes)", "task.exit_status": "0",
                ])
        case .noOutput:
            lifecycle.count { $0.noOutput += 1 }
            logger.info("task done without output", metadata: ["task.seconds": "\(seconds)", "task.exit_status": "0"])
        case .failed(let failure):
            logger.warning(
                "task failed",
                metadata: [
                    "task.seconds": "\(seconds)", "reason": "\(failure.reason)",
                    "task.exit_status": "\(failure.outcome?.summary ?? "none")",
                ])
            return .failed(
                TaskFailure(
                    input: input, reason: failure.reason, outcome: failure.outcome,
                    stderrTail: failure.stderrTail, seconds: seconds))
        case .inputMissing(let failure):
            logger.error("input does not exist", metadata: ["reason": "\(failure.reason)"])
            return .inputMissing(TaskFailure(input: input, reason: failure.reason, outcome: nil, seconds: seconds))
        case .interrupted:
            break
        case .deferred(let reason, let scope):
            logger.warning(
                scope.isMachine
                    ? "task deferred: this machine's trouble, not the task's" : "task deferred: AWS asks to slow down",
                metadata: ["reason": "\(reason)"])
        case .outputTaken(let failure):
            logger.warning("task failed: its output key is taken", metadata: ["reason": "\(failure.reason)"])
            return .outputTaken(
                TaskFailure(input: input, reason: failure.reason, outcome: failure.outcome, seconds: seconds))
        }
        // The machine's health: a task that met its trouble counts, any other end of a task clears the count.
        switch outcome {
        case .deferred(let reason, let scope) where scope.isMachine:
            deadEnds.nodeTrouble(reason, subject: message.messageID)
        case .deferred, .interrupted: break
        default: deadEnds.nodeHealthy()
        }
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
        logger: Logger
    ) async -> (AttemptOutcome, Int64) {
        let failed = { (reason: String, outcome: ProcessOutcome?, tail: String) -> AttemptOutcome in
            .failed(TaskFailure(input: input, reason: reason, outcome: outcome, stderrTail: tail))
        }
        let id = message.messageID.prefix(12).filter { $0.isLetter || $0.isNumber }
        let folderName = "\(slot)-\(id)-\(UInt32.random(in: 0..<UInt32.max))"
        let folder: TaskFolder
        do {
            folder = try TaskFolder.make(in: config.workDir + "/tasks", name: folderName, user: setting.user)
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
        // Only the input bucket's answers say anything about the set-up: a message may name any bucket.
        let ours = input.bucket == config.inputBucket
        let bytesIn: Int64
        // Work not yet started (no command of this message has run) ends at a stop; a message whose commands have
        // begun finishes its inputs within the grace, as without a pipeline.
        let notStarted = stage.map { !$0.isHeld } ?? false
        do {
            bytesIn = try await download(input, to: inputPath, endingAtStop: notStarted, logger: logger)
        } catch {
            if Task.isCancelled || (notStarted && lifecycle.isStopping) { return (.interrupted, 0) }
            // The bucket answered that the key is not there: NoSuchKey, and only that (a bucket that is gone is
            // NoSuchBucket, also a 404; a 404 whose body was lost says neither, and is an ordinary failure, retried,
            // rather than a message given up at once).
            if error.httpStatus == 404 && error.code == "NoSuchKey" {

                if ours { deadEnds.succeeded(.getInput) }
                return (.inputMissing(TaskFailure(input: input, reason: "\(error)", outcome: nil)), 0)
            }
            if let trouble = NodeTrouble.reason(error) { return (.deferred(reason: trouble, scope: .machine), 0) }
            if ours {
                deadEnds.failed(.getInput, resource: "s3://\(input.bucket)", subject: message.messageID, error: error)
            }
            // A throttle that outlasted the client's retries is a wait, not the task's failure.
            if error.isThrottle { return (.deferred(reason: "download: \(error)", scope: .throttle), 0) }
            return (failed("download failed: \(error)", nil, ""), 0)
        }
        if ours { deadEnds.succeeded(.getInput) }
        lifecycle.count { $0.bytesIn += bytesIn }
        // Only now does the run-as user get the data folder: nothing of theirs could reach it during the download.
        do {
            try folder.handOver(input: TaskPaths.localName(forKey: input.key))
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
        let workingDirectory = setting.environmentDirectory ?? data
        if let stage, !stage.isHeld {
            // The slot's previous command may still run: this one waits for it, unless a stop comes first, or the
            // wait passes the plan's prefetch horizon (then a free worker had better take the message). A message
            // on its last run waits for as long as it takes: a release would spend that attempt unrun.
            let clock = self.clock
            let limit: Duration? = lastRun ? nil : .milliseconds(Int(plan.prefetchHorizon * 1000))
            let wait = await lifecycle.cancellingAtStop { await stage.enter(within: limit, clock: clock) }
            if wait == .timedOut && !lifecycle.isStopping {
                logger.notice(
                    "waited \(Int(plan.prefetchHorizon)) s for the slot's running command; released for a free worker")
            }
            if wait != .entered || lifecycle.isStopping {
                stage.leave()
                return (.interrupted, bytesIn)
            }
            stage.reached.fire()
        }
        // The IMDS fence, checked on the machine as it is now: a flushed ruleset would hand the command the role.
        if let fence = setting.fence {
            do {
                try await fence.ensure(logger: logger)
            } catch {
                if lastInput { stage?.leave() }
                return (.deferred(reason: "the IMDS fence cannot be put back: \(error)", scope: .machine), bytesIn)
            }
        }
        // The command's clock starts now, not at the download: `taskTimeout` is the command's, and the controller's
        // "past its taskTimeout" reads this.
        await ledger?.commandStarted(inputKey: input.key, attempt: message.receiveCount)
        let outcome: ProcessOutcome
        do {
            outcome = try await runner.run(
                CommandRun(
                    argv: setting.program + [inputPath], environment: environment, directory: workingDirectory,
                    stdout: folder.commandStdout, stderr: folder.commandStderr, user: setting.user,
                    timeout: config.taskTimeout, privateTmp: folder.tmp))
        } catch {
            await ledger?.commandEnded(inputKey: input.key, attempt: message.receiveCount)
            if lastInput { stage?.leave() }
            if let trouble = NodeTrouble.reason(errno: error.errno, error.description) {
                return (.deferred(reason: trouble, scope: .machine), bytesIn)
            }
            return (failed("\(error)", nil, ""), bytesIn)
        }
        await ledger?.commandEnded(inputKey: input.key, attempt: message.receiveCount)
        if outcome == .interrupted { return (.interrupted, bytesIn) }
        // A command that failed while the work folder's disk was full most likely failed of it.
        if !outcome.succeeded, let full = NodeTrouble.fullDisk(under: data) {
            if lastInput { stage?.leave() }
            return (.deferred(reason: "the command failed (\(outcome.summary)) and \(full)", scope: .disk), bytesIn)
        }
        guard outcome.succeeded else {
            let reason =
                outcome == .timedOut
                ? "the command ran past taskTimeout (\(config.taskTimeout ?? 0) s)"
                : "the command failed (\(outcome.summary))"
            return (failed(reason, outcome, folder.stderrTail(bytes: 64 << 10)), bytesIn)
        }
        // The name is resolved as the command meant it (from its working directory), and must lead to a regular
        // file in the data folder or the environment, without a link (and the run-as user's own); it is opened
        // once, and uploaded from there.
        let line = OutputJudge.lastLine(of: folder.stdout)
        let dataFolder = LocalFile.realPath(data) ?? data
        let resolvedWorkingDirectory = LocalFile.realPath(workingDirectory) ?? workingDirectory
        let folders = [dataFolder] + (setting.environmentDirectory.map { [$0] } ?? [])
        let verdict = OutputJudge.judge(
            line: line, workingDirectory: resolvedWorkingDirectory, folders: folders, owner: setting.user?.uid)
        // The next command of the slot starts now, while this output goes up; unless the output may be a file the
        // next command can reach (in the shared environment, or a hard link to one): then the slot waits for the
        // upload.
        if lastInput
            && (setting.environmentDirectory == nil
                || Self.isTaskOwn(
                    verdict, line: line, dataFolder: dataFolder, workingDirectory: resolvedWorkingDirectory))
        {
            stage?.leave()
        }
        switch verdict {

        case .none:
            return (.noOutput, bytesIn)
        case .rejected(let why):
            // A command may print anything as its last line: keep the reason readable.
            let reason =
                "the command's output line names no usable file: "
                + (why.count > 300 ? String(why.prefix(300)) + "…" : why)
            return (failed(reason, outcome, folder.stderrTail(bytes: 64 << 10)), bytesIn)
        case .file(let descriptor, let name):
            defer { close(descriptor) }
            let key = TaskPaths.outputKey(
                inputKey: input.key, inputPrefix: config.inputPrefix,
                outputPrefix: config.outputPrefix, outputName: name)
            let object = S3URI(bucket: config.outputBucket, key: key)
            let published: Published
            do {
                // Cancelled when a stop's grace runs out (a multipart upload is then aborted).
                published = try await publish(
                    descriptor, to: object, identity: OutputIdentity(input: input, messageID: message.messageID),
                    subject: message.messageID, logger: logger)
            } catch {
                if Task.isCancelled { return (.interrupted, bytesIn) }
                if let trouble = NodeTrouble.reason(error) {
                    return (.deferred(reason: trouble, scope: .machine), bytesIn)
                }
                if error.isThrottle { return (.deferred(reason: "upload: \(error)", scope: .throttle), bytesIn) }
                return (failed("upload failed: \(error)", outcome, ""), bytesIn)
            }
            let bytes = LocalFile.size(.descriptor(descriptor)) ?? 0
            switch published {
            case .uploaded:
                return (.uploaded(key: key, bytes: bytes), bytesIn)
            case .landedBefore:
                logger.notice(
                    "the output of this message's earlier receive is there already: done",
                    metadata: ["s3.key": "\(key)"])
                return (.uploaded(key: key, bytes: bytes), bytesIn)
            case .taken(let owner):
                let reason =
                    "the output key \(object) holds \(owner): not overwritten (two inputs name one output; "
                    + "give each its own name, e.g. with PARALLELIZER_TASK_ID)"
                return (.outputTaken(TaskFailure(input: input, reason: reason, outcome: outcome)), bytesIn)
            }
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
    func download(_ input: S3URI, to path: String, endingAtStop: Bool, logger: Logger) async throws(AWSError) -> Int64 {
        guard endingAtStop else { return try await store.download(input, to: path, logger: logger) }
        let store = self.store
        let result = await lifecycle.cancellingAtStop { () -> Result<Int64, AWSError> in
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
    func record(_ outcome: AttemptOutcome, input: S3URI, attempt: Int, seconds: Double, bytesIn: Int64) {
        switch outcome {
        case .uploaded(let key, let bytes):
            taskEnded(
                inputKey: input.key, attempt: attempt, outcome: .done, seconds: seconds, bytesIn: bytesIn,
                bytesOut: bytes, exitStatus: "exit 0", outputKey: key, reason: nil)
        case .noOutput:
            taskEnded(
                inputKey: input.key, attempt: attempt, outcome: .done, seconds: seconds, bytesIn: bytesIn,
                bytesOut: 0, exitStatus: "exit 0", outputKey: nil, reason: "no output named")
        case .failed(let failure):
            taskEnded(
                inputKey: input.key, attempt: attempt, outcome: .failed, seconds: seconds, bytesIn: bytesIn,
                bytesOut: 0, exitStatus: failure.outcome?.summary ?? "none", outputKey: nil, reason: failure.reason)
        case .inputMissing(let failure), .outputTaken(let failure):
            taskEnded(
                inputKey: input.key, attempt: attempt, outcome: .failed, seconds: seconds, bytesIn: bytesIn,
                bytesOut: 0, exitStatus: failure.outcome?.summary ?? "none", outputKey: nil, reason: failure.reason)
        case .interrupted:
            taskEnded(
                inputKey: input.key, attempt: attempt, outcome: .released, seconds: seconds,
                bytesIn: bytesIn, bytesOut: 0, exitStatus: "interrupted", outputKey: nil,
                reason: "released at shutdown")
        case .deferred(let reason, _):
            taskEnded(
                inputKey: input.key, attempt: attempt, outcome: .released, seconds: seconds,
                bytesIn: bytesIn, bytesOut: 0, exitStatus: "none", outputKey: nil, reason: "deferred: \(reason)")
        }
    }
}
