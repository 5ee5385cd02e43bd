import AWSCore
import AWSServices
import Logging
import TaskLedger

/// Starts workers from a queue's launch template on a market: the one launch path, for `fleet launch`'s first
/// instances and the controller's replacements alike. Every instance is tagged `parallelizer:queue` = the queue URL
/// (the only thing `fleet stop` and the controller ever touch) and named after the queue.
public struct FleetLauncher: Sendable {
    public enum Market: Sendable, Equatable {
        /// RunInstances from the template, the instance types tried in order until one has capacity.
        case onDemand
        /// One instant EC2 Fleet of one-time spot instances over every type × subnet, capacity-optimized: one pool
        /// running dry does not stop the launch.
        case spot
    }

    let ec2: EC2Client
    let queueURL: String
    let launchTemplate: String
    let market: Market
    let instanceTypes: [String]
    let subnets: [String]
    /// What RunInstances is told beside the template (on demand): the role, network and the settings that guard
    /// IMDS and end the bill, so that they hold whatever the template says.
    let settings: EC2Client.InstanceSettings
    /// On demand, exactly `count` or none from a type, so that the next type is tried for the whole count (a
    /// launch's first instances); otherwise what capacity there is (the controller's replacements, topped up each
    /// round).
    let allOrNothing: Bool

    public init(
        ec2: EC2Client, queueURL: String, launchTemplate: String, market: Market, instanceTypes: [String],
        subnets: [String], settings: EC2Client.InstanceSettings = .init(), allOrNothing: Bool = false
    ) {
        self.allOrNothing = allOrNothing
        self.ec2 = ec2
        self.queueURL = queueURL
        self.launchTemplate = launchTemplate
        self.market = market
        self.instanceTypes = instanceTypes
        self.subnets = subnets
        self.settings = settings
    }

    /// The tags every worker carries.
    public static func workerTags(queueURL: String) -> [String: String] {
        [Controller.tag: queueURL, "Name": "parallelizer-" + LedgerSchema.queueName(queueURL)]
    }

    /// Starts up to `count` workers; returns their ids. Pools that failed are logged; a launch that started nothing
    /// throws the first pool's error.
    public func launch(_ count: Int, extraTags: [String: String] = [:], logger: Logger) async throws(AWSError)
        -> [String]
    {
        let tags = Self.workerTags(queueURL: queueURL).merging(extraTags) { _, new in new }
        let types: [String?] = instanceTypes.isEmpty ? [nil] : instanceTypes
        switch market {
        case .spot:
            let pools = types.flatMap { type in
                (subnets.isEmpty ? [nil] : subnets.map(Optional.some)).map { (instanceType: type, subnetID: $0) }
            }
            let fleet = try await ec2.createSpotFleet(
                launchTemplate: launchTemplate, overrides: pools, count: count, tags: tags, logger: logger)
            for error in fleet.errors {
                logger.warning("a spot pool could not be used", metadata: ["error": "\(error)"])
            }
            // An instant fleet answers 200 with only errors (or none) when it started nothing: that is the launch's
            // failure.
            if fleet.instanceIDs.isEmpty {
                throw AWSError(
                    kind: .service, service: "ec2",
                    code: fleet.errors.first.map { String($0.prefix { $0 != ":" }) } ?? "InsufficientInstanceCapacity",
                    message: "CreateFleet started no instance: \(fleet.errors.joined(separator: "; "))")
            }
            return fleet.instanceIDs
        case .onDemand:
            var settings = settings
            if settings.subnetID == nil, !subnets.isEmpty { settings.subnetID = subnets.randomElement() }
            var lastError: AWSError?
            for type in types {
                do {
                    return try await ec2.runInstances(
                        launchTemplate: launchTemplate, count: count, allOrNothing: allOrNothing, instanceType: type,
                        settings: settings,
                        tags: tags, logger: logger
                    ).map(\.instanceID)
                } catch  where error.code == "InsufficientInstanceCapacity" || error.code == "Unsupported" {
                    logger.warning(
                        "no capacity for this instance type; trying the next",
                        metadata: ["instance_type": "\(type ?? "the template's")", "error": "\(error)"])
                    lastError = error
                }
            }
            throw lastError!
        }
    }
}
