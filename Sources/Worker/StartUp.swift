import AWSCore
import AWSServices
@preconcurrency import Glibc
import Logging
import TaskLedger

/// Everything before the first receive: the work folder, the checks that the queue and the output bucket answer, the
/// execution environment, the command, the ledger.
///
/// `prepare` throws `DeadEnd` or `ConfigError` for what no restart can fix (exit status 2), anything else for what
/// one may (exit status 1). The checks take a second at most: a misconfigured fleet ends before it takes a message.
struct StartUp: Sendable {
    let config: WorkerConfig
    let context: AWSContext
    let options: Daemon.Options

    /// What start-up found and made.
    struct Prepared: Sendable {
        var s3: S3Client
        var sqs: SQSClient
        var setting: TaskSetting
        var instanceID: String
        var hasRedrivePolicy: Bool
        /// The redrive policy's `maxReceiveCount`: the receive after it goes to the dead-letter queue.
        var maxReceiveCount: Int?
        var ledger: Ledger?
        /// The walls commands run within (namespaces as root, else a process group).
        var isolation: Isolation
        /// The work folder's lock, held open for the daemon's life.
        var workDirLock: Int32
    }

    func prepare(logger: Logger) async throws -> Prepared {
        let lock = try claimWorkDir()
        var prepared = false
        defer { if !prepared { close(lock) } }
        let s3 = try S3Client(context: context, options: config.s3Options)
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
        let maxReceiveCount = RedrivePolicy(attributes: attributes)?.maxReceiveCount
        var instanceID = hostName()
        if let imds = context.imds, let id = try? await imds.instanceID() { instanceID = id }
        try await checkOutputBucket(s3, instanceID: instanceID, logger: logger)

        var user: RunAsUser?
        if let name = config.runAsUser {
            guard let found = RunAsUser.lookup(name) else {
                throw ConfigError(key: "runAsUser", message: "no such user '\(name)'")
            }
            guard getuid() == 0 else { throw ConfigError(key: "runAsUser", message: "switching users needs root") }
            guard found.uid != 0 else {
                throw ConfigError(
                    key: "runAsUser", message: "'\(name)' is root: leave runAsUser unset to run the command as root")
            }
            user = found
            // The user may pass through (not list) the work dir to reach its own task folders.
            _ = chown(config.workDir, 0, 0)
            _ = chmod(config.workDir, 0o711)
            _ = chmod(config.workDir + "/tasks", 0o711)
        }
        let environmentDirectory = try await unpackEnvironment(s3, logger: logger)
        // Resolved once: a relative name against the environment (or the daemon's working folder), a bare name on
        // PATH too. A command that cannot be found would fail every task, so that stops start-up instead.
        let environment = commandEnvironment(user: user)
        let base = environmentDirectory ?? currentDirectory()
        guard let program = ProcessRunner.resolve(config.analysisProgram[0], in: base, path: environment["PATH"] ?? "")
        else {
            throw ConfigError(
                key: "analysisProgram", message: "'\(config.analysisProgram[0])' was not found in \(base) or on PATH")
        }
        var ledger: Ledger?
        if let table = config.ledgerTable {
            // Not checked here: a missing or throttled table must not stop the work, only be reported.
            let dynamo = try DynamoDBClient(context: context, region: SQSClient.region(ofQueueURL: config.queueURL))
            var ledgerLogger = logger
            ledgerLogger[metadataKey: "ledger.table"] = "\(table)"
            var settings = options.ledger
            settings.taskTimeout = config.taskTimeout.map(Double.init)
            settings.slots = max(1, config.numThreads)
            if let imds = context.imds { settings.instanceType = try? await imds.instanceType() }
            ledger = Ledger(
                client: dynamo, table: table, queueURL: config.queueURL, instanceID: instanceID,
                settings: settings, logger: ledgerLogger)
        }
        var setting = TaskSetting(
            program: [program] + config.analysisProgram.dropFirst(),
            environmentDirectory: environmentDirectory, environment: environment, user: user)
        if let user, !config.passCredentials {
            setting.fence = try await fenceOffIMDS(for: user, path: environment["PATH"] ?? "", logger: logger)
        }
        if !config.limits.isEmpty {
            switch Cgroups.find(limits: config.limits) {
            case .success(let cgroups):
                setting.cgroups = cgroups
                logger.info("per-task limits through \(cgroups.hierarchy)")
            case .failure(let why):
                logger.warning("per-task limits are off: \(why); tasks run without memoryMax, cpuMax and pidsMax")
            }
        }
        // A private /tmp hides what lies under the real one: not when the work, the command (or a file named in its
        // arguments), its environment or its TMPDIR do.
        var privateTmp = config.privateTmp
        let named =
            [config.workDir, program, environmentDirectory, environment["TMPDIR"]].compactMap { $0 }
            + config.analysisProgram.dropFirst().filter { $0.hasPrefix("/") }
        let underTmp = named.first { path in

            let real = LocalFile.realPath(path) ?? path
            return ["/tmp", "/var/tmp"].contains { real == $0 || real.hasPrefix($0 + "/") }
        }
        if privateTmp, let underTmp {
            privateTmp = false
            logger.notice("commands share the host's /tmp: \(underTmp) lies under it (privateTmp would hide it)")
        }
        let isolation = ProcessRunner.probeIsolation(privateTmp: privateTmp, scratch: config.workDir + "/tasks")
        logger.info("\(isolation)")
        if privateTmp && isolation.pidNamespace && !isolation.privateTmp {
            logger.notice("commands share the host's /tmp: this machine refuses them a mount namespace")
        }

        prepared = true
        return Prepared(
            s3: s3, sqs: sqs, setting: setting, instanceID: instanceID, hasRedrivePolicy: hasRedrive,
            maxReceiveCount: maxReceiveCount,
            ledger: ledger, isolation: isolation, workDirLock: lock)
    }

    /// Makes the work folder the daemon's own: created when missing, refused when it is someone else's or shared
    /// (`/tmp`: the daemon would take it over), and locked, so that a second daemon on the same folder stops at
    /// once instead of removing the first one's task folders under it. Task folders left by a killed run are
    /// removed (their messages come back by themselves), through descriptors.
    func claimWorkDir() throws(ConfigError) -> Int32 {
        func refuse(_ message: String) -> ConfigError { ConfigError(key: "workDir", message: message) }
        if mkdir(config.workDir, 0o700) != 0 && errno != EEXIST {
            throw refuse("cannot create \(config.workDir): \(String(cString: strerror(errno)))")
        }
        // A link to the real folder (on an instance store, say) is fine: the folder it leads to is what is checked.
        let dir = LocalFile.realPath(config.workDir) ?? config.workDir
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw refuse("cannot open \(dir): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & (S_ISVTX | S_IWOTH) == 0 else {
            throw refuse("\(dir) must be a folder of the daemon's own, not a shared one (such as /tmp)")
        }
        guard st.st_uid == getuid() else {
            throw refuse("\(dir) belongs to uid \(st.st_uid), not to the daemon's user (uid \(getuid()))")
        }
        // The lock before anything changes: a second daemon must not touch the first one's folder (its mode, its
        // tasks) on its way to being refused.
        let lock = openat(fd, ".lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard lock >= 0 else { throw refuse("cannot lock \(dir): \(String(cString: strerror(errno)))") }
        guard flock(lock, LOCK_EX | LOCK_NB) == 0 else {
            close(lock)
            throw refuse("another parallelizer daemon is using \(dir): give each its own workDir")
        }
        _ = fchmod(fd, 0o700)
        LocalFile.removeTree(in: fd, "tasks")
        _ = mkdirat(fd, "tasks", 0o700)
        return lock
    }

    /// Runs a start-up check. Refused credentials (or none) are tried again for a few seconds first: at boot, IMDS
    /// may not serve the role's keys yet, and IAM takes seconds to know a role that was just made.
    static func checking<T>(logger: Logger, _ call: () async throws(AWSError) -> T) async throws(AWSError) -> T {
        let patience = ContinuousClock.now + .seconds(5)
        while true {
            do {
                return try await call()
            } catch
                where [.noCredentials, .credentialsRefused].contains(error.setupProblem)
                && ContinuousClock.now < patience
            {
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
            logger.warning(
                "the output bucket's write check could not abort its upload; the bucket's lifecycle rule removes it",
                metadata: ["s3.key": "\(key)", "error": "\(error)"])
        }
    }

    /// A run-as user's command must not reach the instance role's credentials, which IMDS hands to anyone on the
    /// instance who asks: unless `passCredentials` hands them over knowingly, its packets to IMDS are rejected.
    func fenceOffIMDS(for user: RunAsUser, path: String, logger: Logger) async throws -> IMDSFence {
        guard let nft = IMDSFence.nftBinary(path: path) else {
            throw ConfigError(
                key: "runAsUser",
                message: "the command could reach the instance role's credentials at IMDS: install nftables (nft), "
                    + "or set passCredentials=true to hand them over knowingly")
        }
        let fence = IMDSFence(nft: nft, uid: user.uid, workDir: config.workDir)
        do {
            try await fence.install()
        } catch {
            throw ConfigError(key: "runAsUser", message: "cannot keep the command from IMDS: \(error)")
        }
        logger.info(
            "IMDS is closed to the run-as user", metadata: ["user": "\(user.name)", "nft.table": "inet \(fence.table)"])
        return fence
    }

    /// Fetches and unpacks `environmentZip`, when there is one; returns the folder the command runs in.
    func unpackEnvironment(_ s3: S3Client, logger: Logger) async throws -> String? {
        guard let bucket = config.environmentBucket, let zip = config.environmentZip else { return nil }
        do {
            return try await EnvironmentArchive(s3: s3, maxBytes: Int64(config.environmentMaxMiB) << 20).prepare(
                bucket: bucket, key: zip, prefix: config.environmentPrefix, workDir: config.workDir, logger: logger)
        } catch let error as AWSError {
            let resource = "s3://\(bucket)/\(zip)"
            if let problem = error.setupProblem {
                throw DeadEnd.setup(problem, action: "s3:GetObject", resource: resource, error: error)
            }
            if error.httpStatus == 404 {
                throw DeadEnd(
                    what: "the environment archive \(resource) does not exist",
                    fix: "upload it, or correct environmentBucket and environmentZip", error: error)
            }
            throw StartUpError(message: "the environment archive cannot be fetched: \(error)")
        } catch let failure as EnvironmentArchive.Failure {
            throw ConfigError(key: "environmentZip", message: failure.message)
        }
    }

    /// The command's environment: the daemon's, without AWS credentials unless `passCredentials`.
    func commandEnvironment(user: RunAsUser?) -> [String: String] {
        var environment = context.environment
        if !config.passCredentials {
            // Every way an AWS SDK finds credentials: keys, profiles and their files, a container's credentials
            // endpoint and its token, a web identity's token file and role.
            for name in [
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_ROLE_SESSION_NAME",
            ] {
                environment.removeValue(forKey: name)
            }
            for name in environment.keys where name.hasPrefix("AWS_CONTAINER_") {
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
