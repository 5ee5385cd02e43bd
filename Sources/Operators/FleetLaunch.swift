import AWSCore
import AWSServices
import Logging
import TaskLedger

/// `parallelizer fleet launch`: records the queue's launch template, starts the workers on their market, and
/// optionally the controller's instance. The user-data is rendered before (`BootScript`); this is the EC2 and Auto
/// Scaling part, in the order that leaves nothing half made: the template first (every market and every later
/// replacement starts from it), then the workers, then the controller that keeps them at size.
public struct FleetLaunch: Sendable {
    /// Where the workers come from.
    public enum Market: String, Sendable, CaseIterable {
        case onDemand = "on-demand"
        case spot
        /// An Auto Scaling group of on-demand instances over the types.
        case asg
        /// An Auto Scaling group of spot instances over the types, capacity-optimized, which replaces interrupted
        /// ones.
        case asgSpot = "asg-spot"

        public var isGroup: Bool { self == .asg || self == .asgSpot }
    }

    public struct Plan: Sendable {
        public var queueURL: String
        public var instanceProfile: String
        public var count: Int
        public var market: Market = .onDemand
        /// The first is the template's; spot and the groups spread over all of them.
        public var instanceTypes: [String] = ["c7i.large"]
        /// Nil: the latest Amazon Linux 2023 for `arch`, from SSM's public parameter.
        public var imageID: String?
        public var arch = "x86_64"
        public var subnets: [String] = []
        public var securityGroup: String?
        public var keyName: String?
        public var volumeGiB: Int?
        public var userData: String
        /// The controller's instance, when one is asked for.
        public var controller: ControllerInstance?

        public init(queueURL: String, instanceProfile: String, count: Int, userData: String) {
            self.queueURL = queueURL
            self.instanceProfile = instanceProfile
            self.count = count
            self.userData = userData
        }

        public var launchTemplate: String { Controller.launchTemplateName(queueURL: queueURL) }
    }

    public struct ControllerInstance: Sendable {
        public var instanceProfile: String
        public var instanceType: String
        public var userData: String

        public init(instanceProfile: String, instanceType: String, userData: String) {
            self.instanceProfile = instanceProfile
            self.instanceType = instanceType
            self.userData = userData
        }
    }

    /// What was started: worker ids (or the group's name), and the controller's id.
    public struct Outcome: Sendable, Equatable {
        public var workers: [String] = []
        public var group: String?
        public var controller: String?
    }

    let ec2: EC2Client
    let autoscaling: AutoScalingClient
    let ssm: SSMClient

    public init(ec2: EC2Client, autoscaling: AutoScalingClient, ssm: SSMClient) {
        self.ec2 = ec2
        self.autoscaling = autoscaling
        self.ssm = ssm
    }

    /// The public parameter naming the latest Amazon Linux 2023 image for an architecture.
    public static func imageParameter(arch: String) -> String {
        "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-\(arch)"
    }

    /// Starts the fleet. `say` tells a person each step; `started` gets each worker id (or the group's name) as
    /// soon as it exists, so that a step failing later still leaves what was started on stdout.
    public func run(
        _ plan: Plan, say: @Sendable (String) -> Void, started: @Sendable (String) -> Void, logger: Logger
    ) async throws(AWSError) -> Outcome {
        var outcome = Outcome()
        let image: String
        if let given = plan.imageID {
            image = given
        } else {
            do {
                image = try await ssm.parameter(Self.imageParameter(arch: plan.arch), logger: logger)
            } catch {
                var error = error
                error.message += " (the image is looked up in SSM's public parameters; give --ami to name one)"
                throw error
            }
            say("image \(image): the latest Amazon Linux 2023 for \(plan.arch)")
        }
        var data = LaunchTemplateData(
            imageID: image, instanceType: plan.instanceTypes.first ?? "c7i.large",
            instanceProfile: plan.instanceProfile, userData: plan.userData)
        data.securityGroups = plan.securityGroup.map { [$0] } ?? []
        data.keyName = plan.keyName
        data.tags = FleetLauncher.workerTags(queueURL: plan.queueURL)
        if let gib = plan.volumeGiB {
            data.rootVolume = (try await ec2.rootDeviceName(imageID: image, logger: logger), gib)
        }
        // Every market starts from this template, and the controller launches replacements from it: each launch
        // makes its settings the default.
        let template = plan.launchTemplate
        let recorded = try await ec2.putLaunchTemplate(
            name: template, data: data, tags: [Controller.tag: plan.queueURL], logger: logger)
        say(
            recorded.created
                ? "launch template \(template): created"
                : "launch template \(template): version \(recorded.version), now the default")

        switch plan.market {
        case _ where plan.count == 0:
            say("no workers asked (--count 0): the controller alone")
        case .asg, .asgSpot:
            // The group starts N from the template and replaces lost ones; its workers leave it (lowering its
            // desired capacity) when the queue is drained, the controller scales it to 0, `fleet stop` deletes it.
            let policy = MixedInstancesPolicy(
                launchTemplate: template, instanceTypes: plan.instanceTypes,
                onDemandPercentage: plan.market == .asg ? 100 : 0)
            let group = try await autoscaling.group(named: template, logger: logger)
            if let status = group?.status, !status.isEmpty {
                // A group `fleet stop` deleted is listed, being deleted, for minutes; it takes no update.
                throw AWSError(
                    kind: .service, service: "autoscaling", code: "ResourceInUse",
                    message: "the group \(template) is \(status); launch again once it is gone")
            }
            if group != nil {
                try await autoscaling.resizeGroup(template, count: plan.count, policy: policy, logger: logger)
                say("group \(template): resized to \(plan.count)")
            } else {
                let zone = plan.subnets.isEmpty ? try await ec2.firstAvailabilityZone(logger: logger) : nil
                try await autoscaling.createGroup(
                    template, count: plan.count, policy: policy, subnets: plan.subnets, zone: zone,
                    tags: [Controller.tag: plan.queueURL], logger: logger)
                say("group \(template): created with \(plan.count) instances")
            }
            outcome.group = template
            started(template)
        case .onDemand, .spot:
            let launcher = FleetLauncher(
                ec2: ec2, queueURL: plan.queueURL, launchTemplate: template,
                market: plan.market == .spot ? .spot : .onDemand, instanceTypes: plan.instanceTypes,
                subnets: plan.market == .spot ? plan.subnets : Array(plan.subnets.prefix(1)),
                settings: EC2Client.InstanceSettings(
                    instanceProfile: plan.instanceProfile, securityGroups: data.securityGroups, keyName: plan.keyName),
                allOrNothing: true)
            outcome.workers = try await launcher.launch(plan.count, logger: logger)
            outcome.workers.forEach(started)
            say(
                "started \(outcome.workers.count) \(plan.market.rawValue) instance(s) (of \(plan.count) asked) over "
                    + "\(plan.instanceTypes.joined(separator: ",")) from \(image) (launch template \(template))")
        }

        if let controller = plan.controller {
            // Tagged as the queue's controller, not with the workers' tag, so that it never stops itself.
            do {
                outcome.controller = try await startController(
                    controller, plan: plan, image: image, data: data, logger: logger)
            } catch {
                // The workers run already: say so, and how to go on, rather than leave them without a word.
                var error = error
                let started = outcome.group.map { "the group \($0) runs" } ?? "\(outcome.workers.count) worker(s) run"
                error.message +=
                    " (\(started) without a controller: start it alone with `fleet launch ... --count 0 --controller`, or stop them with `fleet stop`)"
                throw error
            }
            say("started the controller \(outcome.controller ?? "?") (\(controller.instanceType))")
        }
        return outcome
    }

    func startController(
        _ controller: ControllerInstance, plan: Plan, image: String, data: LaunchTemplateData, logger: Logger
    ) async throws(AWSError) -> String? {
        let instances = try await ec2.runInstances(
            imageID: image, count: 1, instanceType: controller.instanceType,
            tags: [
                FleetStop.controllerTag: plan.queueURL,
                "Name": "parallelizer-controller-" + LedgerSchema.queueName(plan.queueURL),
            ],
            settings: EC2Client.InstanceSettings(
                instanceProfile: controller.instanceProfile, userData: controller.userData,
                subnetID: plan.subnets.first, securityGroups: data.securityGroups, keyName: plan.keyName),
            logger: logger)
        return instances.first?.instanceID
    }

    /// The controller's command line for this plan: the same queue, ledger, market, types and subnets as the
    /// workers. A group keeps its own size, so the controller only retires stuck workers and stops it.
    public static func controllerArguments(
        _ plan: Plan, target: Int, ledgerTable: String?, onComplete: String? = nil
    ) -> [String] {
        var arguments = ["--queue-url", plan.queueURL]
        if let ledgerTable { arguments += ["--ledger-table", ledgerTable] }
        if let onComplete { arguments += ["--on-complete", onComplete] }
        if plan.market.isGroup { return arguments + ["--market", "asg"] }
        arguments += ["--target", String(target), "--market", plan.market.rawValue]
        if plan.instanceTypes.count > 1 {
            arguments += ["--instance-types", plan.instanceTypes.joined(separator: ",")]
        }
        if !plan.subnets.isEmpty { arguments += ["--subnets", plan.subnets.joined(separator: ",")] }
        return arguments
    }
}
