import AWSCore
import AWSServices
import Logging

// The end of a run: after a drain, and after a dead end, the instance leaves its Auto Scaling group and powers
// off, so that neither a finished nor a misconfigured fleet goes on billing.
extension Daemon {
    /// After a drain or a dead end, when `shouldShutdown` (and not `--once`): leaves the Auto Scaling group (so it
    /// does not start a replacement that would meet the same end) and runs the shutdown command, so that neither a
    /// finished nor a misconfigured fleet goes on billing.
    /// - Parameter replaceMe: leave the group without lowering its desired capacity, so that it starts a
    ///   replacement (after a rebalance recommendation, work remains).
    func endOfRun(afterDeadEnd deadEnd: Bool, replaceMe: Bool = false, logger: Logger) async {
        guard config.shouldShutdown, !options.once else { return }
        // The instance's id from IMDS: nil when this is not an EC2 instance (a laptop, a CI runner).
        var instanceID: String?
        if let imds = context.imds { instanceID = try? await imds.instanceID() }
        guard instanceID != nil || config.shutdownCommandGiven else {
            logger.notice("not on an EC2 instance (IMDS gave no instance id): the default shutdown command is not run")
            return
        }
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
        await runShutdownCommand(logger: logger)
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

    func runShutdownCommand(logger: Logger) async {
        let argv = config.shutdownCommand
        guard
            let program = ProcessRunner.resolve(
                argv[0], in: "/", path: context.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin")
                ?? ProcessRunner.resolve(argv[0], in: "/", path: "/usr/sbin:/sbin:/usr/bin:/bin")
        else {
            logger.error("shutdown command not found", metadata: ["command": "\(argv.joined(separator: " "))"])
            return
        }
        logger.notice("running the shutdown command", metadata: ["command": "\(argv.joined(separator: " "))"])
        let out = config.workDir + "/shutdown.log"
        do {
            let outcome = try await ProcessRunner().run(
                argv: [program] + argv.dropFirst(), environment: context.environment,
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
