import AWSCore
import AWSServices
import FoundationEssentials
import Logging

/// Stops a queue's fleet and nothing else: the controller's instance (tagged `parallelizer:controller`), then the
/// Auto Scaling groups and launch templates tagged with the queue, then every instance tagged
/// `parallelizer:queue` = the queue's URL. An instance without that exact tag is never listed, so never touched
/// (aws-parallelizer's KillInstances terminated every instance in the region). Queues, buckets and roles stay.
///
/// The order matters: a controller still running would launch replacements for what is stopped after it, and a
/// group would replace its terminated instances.
public struct FleetStop: Sendable {
    public struct Outcome: Sendable, Equatable, Codable {
        public var controllers: [String] = []
        public var groups: [String] = []
        public var launchTemplates: [String] = []
        public var instances: [String] = []
    }

    public static let controllerTag = "parallelizer:controller"
    static let alive = ["pending", "running", "stopping", "stopped"]

    let ec2: EC2Client
    let autoscaling: AutoScalingClient
    let queueURL: String
    let dryRun: Bool
    /// How long to wait for the controller to be gone before the workers are listed (the AWS CLI's waiter's 10
    /// minutes).
    public var controllerDeadline: Double = 600

    public init(ec2: EC2Client, autoscaling: AutoScalingClient, queueURL: String, dryRun: Bool) {
        self.ec2 = ec2
        self.autoscaling = autoscaling
        self.queueURL = queueURL
        self.dryRun = dryRun
    }

    /// `say` tells a person what is done; `stopped` gets each instance id as soon as it is terminated (or would be),
    /// so that a step failing later still leaves the ids of what was stopped before it.
    public func run(say: (String) -> Void, stopped: (String) -> Void = { _ in }, logger: Logger) async throws(AWSError)
        -> Outcome
    {
        var outcome = Outcome()
        outcome.controllers = try await tagged(Self.controllerTag, logger: logger)
        if !outcome.controllers.isEmpty {
            if dryRun {
                say("would terminate the controller \(outcome.controllers.joined(separator: " "))")
                outcome.controllers.forEach(stopped)
            } else {
                try await ec2.terminateInstances(outcome.controllers, logger: logger)
                outcome.controllers.forEach(stopped)
                try await waitUntilGone(outcome.controllers, logger: logger)
                say("controller \(outcome.controllers.joined(separator: " ")) terminated")
            }
        }
        for group in try await autoscaling.groups(taggedWith: Controller.tag, value: queueURL, logger: logger) {
            // A group being deleted already (a stop run twice) refuses an update: it is on its way.
            if group.status == "Delete in progress" {
                say("group \(group.name) is being deleted already")
                continue
            }
            outcome.groups.append(group.name)
            if dryRun {
                say("would delete group \(group.name) and its instances")
            } else {
                try await autoscaling.deleteGroup(group.name, logger: logger)
                say("group \(group.name) deleted")
            }
        }
        for name in try await ec2.launchTemplates(taggedWith: Controller.tag, value: queueURL, logger: logger) {
            outcome.launchTemplates.append(name)
            if dryRun {
                say("would delete launch template \(name)")
            } else {
                try await ec2.deleteLaunchTemplate(name: name, logger: logger)
                say("launch template \(name) deleted")
            }
        }
        outcome.instances = try await tagged(Controller.tag, logger: logger)
        if outcome.instances.isEmpty {
            say("no running instance is tagged \(Controller.tag)=\(queueURL)")
        } else if dryRun {
            say("would terminate \(outcome.instances.count) instance(s)")
            outcome.instances.forEach(stopped)
        } else {
            // At most 1,000 ids a call.
            var rest = outcome.instances[...]
            while !rest.isEmpty {
                let batch = Array(rest.prefix(1000))
                try await ec2.terminateInstances(batch, logger: logger)
                batch.forEach(stopped)
                rest = rest.dropFirst(1000)
            }
            say("terminated \(outcome.instances.count) instance(s) tagged \(Controller.tag)=\(queueURL)")
        }
        return outcome
    }

    /// The ids of the instances not yet terminated whose tag `key` is exactly the queue's URL.
    func tagged(_ key: String, logger: Logger) async throws(AWSError) -> [String] {
        try await ec2.describeInstances(
            filters: [("tag:\(key)", [queueURL]), ("instance-state-name", Self.alive)], logger: logger
        ).map(\.instanceID)
    }

    func waitUntilGone(_ ids: [String], logger: Logger) async throws(AWSError) {
        let started = ContinuousClock.now
        while ContinuousClock.now - started < .seconds(controllerDeadline) {
            let left = try await ec2.describeInstances(instanceIDs: ids, logger: logger).filter {
                $0.state != "terminated"
            }
            if left.isEmpty { return }
            try? await Task.sleep(nanoseconds: 2_000_000_000)
        }
        throw AWSError.client(
            "ec2", "the controller \(ids.joined(separator: " ")) is not terminated after \(Int(controllerDeadline)) s")
    }
}
