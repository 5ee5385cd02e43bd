import AWSCore
import AWSServices
@preconcurrency import Glibc
import Logging

// The end of a run: after a drain, and after a dead end, the instance leaves its Auto Scaling group and powers
// off, so that neither a finished nor a misconfigured fleet goes on billing.
extension Daemon {
    /// After a drain or a dead end, when `shouldShutdown` (and not `--once`): leaves the Auto Scaling group (so it
    /// does not start a replacement that would meet the same end) and runs the shutdown command, so that neither a
    /// finished nor a misconfigured fleet goes on billing.
    /// - Parameter replaceMe: leave the group without lowering its desired capacity, so that it starts a
    ///   replacement (after a rebalance recommendation, work remains).
    ///
    /// After a dead end, the shutdown command waits `deadEndPause` first (time to look over SSH); a stop meanwhile
    /// keeps the instance up.
    func endOfRun(afterDeadEnd deadEnd: Bool, replaceMe: Bool = false, logger: Logger) async {
        guard config.shouldShutdown, !options.once else { return }
        // The instance's id from IMDS: nil when this is not an EC2 instance (a laptop, a CI runner).
        var instanceID: String?
        if let imds = context.imds { instanceID = try? await imds.instanceID() }
        guard instanceID != nil || config.shutdownCommandGiven else {
            logger.notice("not on an EC2 instance (IMDS gave no instance id): the default shutdown command is not run")
            return
        }
        // (Before leaving a group: the group terminates the instance at once.)
        if deadEnd, await !PowerOffPause.wait(seconds: config.deadEndPause, clock: clock, logger: logger) { return }
        if let group = config.autoScalingGroup {
            let left =
                if let instanceID {
                    await leaveGroup(group, instanceID: instanceID, shrink: !replaceMe, logger: logger)
                } else {
                    false
                }
            if deadEnd && !left {
                // Powered off, it would be replaced by one that meets the same end, again and again.
                logger.error(
                    "staying up instead of powering off: the Auto Scaling group would replace this instance with one that meets the same end",
                    metadata: ["group": "\(group)"])
                return
            }
        }
        await Self.runShutdownCommand(config: config, environment: context.environment, logger: logger)
    }

    /// A daemon whose parameters could not be resolved (exit status 2) still powers its instance off, after the
    /// pause, when `shouldShutdown` is on: as after any dead end, a fleet launched with a typo in its user-data must
    /// not bill forever. The default command only on an EC2 instance (IMDS gives its id).
    public static func endOfRunAfterBadParameters(
        _ layers: [ConfigLayer], environment: [String: String], imds: IMDSClient?, logger: Logger
    ) async {
        let config = WorkerConfig.endOfRunSettings(layers)
        guard config.shouldShutdown else { return }
        var instanceID: String?
        if let imds { instanceID = try? await imds.instanceID() }
        // An instance whose IMDS does not answer is still one when its firmware says so.
        let onEC2 = instanceID != nil || IMDSClient.isExpected(environment: environment)
        guard onEC2 || config.shutdownCommandGiven else {
            logger.notice("not on an EC2 instance (IMDS gave no instance id): the default shutdown command is not run")
            return
        }
        if let group = config.autoScalingGroup {
            // Its parameters unread, it cannot leave the group as a dead end does; powered off, it would be replaced
            // by one with the same user-data, again and again.
            logger.error(
                "staying up instead of powering off: the Auto Scaling group would replace this instance with one that meets the same end",
                metadata: ["group": "\(group)"])
            return
        }
        guard await PowerOffPause.wait(seconds: config.deadEndPause, clock: SystemClock(), logger: logger) else {
            return
        }
        await runShutdownCommand(config: config, environment: environment, logger: logger)
    }

    /// Leaves the Auto Scaling group with its desired capacity lowered by one (`shrink`), so the group does not
    /// start a replacement that would find no work (and bill until someone notices); without `shrink`, the group
    /// replaces it. The instance is terminated by the group; the shutdown command still runs, in case the call did
    /// not get through. Returns whether it left.
    func leaveGroup(_ group: String, instanceID: String, shrink: Bool = true, logger: Logger) async -> Bool {
        do {
            let client = try AutoScalingClient(context: context)  // the instance's own region
            try await client.terminateInstanceInGroup(instanceID, decrementDesiredCapacity: shrink, logger: logger)
            logger.notice(
                shrink
                    ? "left the Auto Scaling group: it shrinks instead of replacing this instance"
                    : "left the Auto Scaling group: it starts a replacement",
                metadata: ["group": "\(group)", "instance": "\(instanceID)"])
            return true
        } catch {
            logger.error(
                "cannot leave the Auto Scaling group: it will start a replacement",
                metadata: ["group": "\(group)", "instance": "\(instanceID)", "error": "\(error)"])
            return false
        }
    }

    static func runShutdownCommand(config: WorkerConfig, environment: [String: String], logger: Logger) async {
        let argv = config.shutdownCommand
        guard
            let program = ProcessRunner.resolve(
                argv[0], in: "/", path: environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin")
                ?? ProcessRunner.resolve(argv[0], in: "/", path: "/usr/sbin:/sbin:/usr/bin:/bin")
        else {
            logger.error("shutdown command not found", metadata: ["command": "\(argv.joined(separator: " "))"])
            return
        }
        logger.notice("running the shutdown command", metadata: ["command": "\(argv.joined(separator: " "))"])
        // (The work folder may not exist when the parameters could not be read.)
        let out = access(config.workDir, W_OK) == 0 ? config.workDir + "/shutdown.log" : "/dev/null"
        do {
            let outcome = try await ProcessRunner().run(
                argv: [program] + argv.dropFirst(), environment: environment,
                directory: "/", stdoutPath: out, stderrPath: out, user: nil,
                timeout: 120)
            if !outcome.succeeded {
                logger.error("the shutdown command failed", metadata: ["exit": "\(outcome.summary)"])
            }
        } catch {
            logger.error("cannot run the shutdown command", metadata: ["error": "\(error)"])
        }
    }
}
