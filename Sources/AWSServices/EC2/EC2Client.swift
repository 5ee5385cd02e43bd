import AWSCore
import FoundationEssentials
import Logging

/// An instance as DescribeInstances reports it.
public struct EC2Instance: Sendable, Equatable {
    public var instanceID: String
    /// `pending`, `running`, `shutting-down`, `terminated`, `stopping`, `stopped`.
    public var state: String
    public var launchTime: String?
    public var tags: [String: String]

    public init(instanceID: String, state: String, launchTime: String? = nil, tags: [String: String] = [:]) {
        self.instanceID = instanceID
        self.state = state
        self.launchTime = launchTime
        self.tags = tags
    }
}

/// EC2 over its query protocol (form-encoded POST, XML replies).
public struct EC2Client: Sendable {
    public static let apiVersion = "2016-11-15"
    public let context: AWSContext
    public let endpoint: ServiceEndpoint

    public init(context: AWSContext, region: String? = nil) throws(AWSError) {
        self.context = context
        self.endpoint = try context.endpoint("ec2", region: region)
    }

    func call(_ action: String, _ parameters: [(String, String)], logger: Logger) async throws(AWSError) -> XMLElement {
        try await QueryProtocol(context: context, endpoint: endpoint, version: Self.apiVersion).call(
            action, parameters,
            logger: logger)
    }

    /// Instances matching `filters` (name → values, e.g. `tag:parallelizer:queue` → [url]), all pages.
    public func describeInstances(
        filters: [(String, [String])] = [], instanceIDs: [String] = [],
        logger: Logger
    ) async throws(AWSError) -> [EC2Instance] {
        var parameters: [(String, String)] = []
        for (i, (name, values)) in filters.enumerated() {
            parameters.append(("Filter.\(i + 1).Name", name))
            for (j, value) in values.enumerated() { parameters.append(("Filter.\(i + 1).Value.\(j + 1)", value)) }
        }
        for (i, id) in instanceIDs.enumerated() { parameters.append(("InstanceId.\(i + 1)", id)) }
        var result: [EC2Instance] = []
        var token: String?
        repeat {
            let root = try await call(
                "DescribeInstances", parameters + (token.map { [("NextToken", $0)] } ?? []),
                logger: logger)
            for reservation in root.child("reservationSet")?.all("item") ?? [] {
                for item in reservation.child("instancesSet")?.all("item") ?? [] {
                    result.append(Self.instance(item))
                }
            }
            token = root["nextToken"].flatMap { $0.isEmpty ? nil : $0 }
        } while token != nil
        return result
    }

    static func instance(_ item: XMLElement) -> EC2Instance {
        var tags: [String: String] = [:]
        for tag in item.child("tagSet")?.all("item") ?? [] {
            if let key = tag["key"] { tags[key] = tag["value"] ?? "" }
        }
        return EC2Instance(
            instanceID: item["instanceId"] ?? "", state: item.child("instanceState")?["name"] ?? "",
            launchTime: item["launchTime"], tags: tags)
    }

    /// Terminates the instances; returns their new states by id.
    @discardableResult
    public func terminateInstances(_ ids: [String], logger: Logger) async throws(AWSError) -> [String: String] {
        guard !ids.isEmpty else { return [:] }
        let root = try await call(
            "TerminateInstances", ids.enumerated().map { ("InstanceId.\($0.offset + 1)", $0.element) },
            logger: logger)
        var states: [String: String] = [:]
        for item in root.child("instancesSet")?.all("item") ?? [] {
            if let id = item["instanceId"] { states[id] = item.child("currentState")?["name"] ?? "" }
        }
        return states
    }

    public func createTags(resources: [String], tags: [String: String], logger: Logger) async throws(AWSError) {
        var parameters: [(String, String)] = []
        for (i, id) in resources.enumerated() { parameters.append(("ResourceId.\(i + 1)", id)) }
        for (i, (key, value)) in tags.sorted(by: { $0.key < $1.key }).enumerated() {
            parameters.append(("Tag.\(i + 1).Key", key))
            parameters.append(("Tag.\(i + 1).Value", value))
        }
        _ = try await call("CreateTags", parameters, logger: logger)
    }

    /// Starts `count` instances of an image (tests, the demo's simulated fleet, and the controller's own instance
    /// that `fleet launch --controller` starts). With `settings`, they carry a role, user-data and the settings
    /// every instance of ours has (IMDSv2 required, terminate on shutdown).
    public func runInstances(
        imageID: String, count: Int, instanceType: String = "t3.micro", tags: [String: String] = [:],
        settings: InstanceSettings? = nil, logger: Logger
    ) async throws(AWSError) -> [EC2Instance] {
        var parameters: [(String, String)] = [
            ("ImageId", imageID), ("MinCount", String(count)), ("MaxCount", String(count)),
            ("InstanceType", instanceType),
        ]
        if let settings { parameters += settings.parameters() }
        parameters += Self.tagSpecification(tags)
        let root = try await call("RunInstances", parameters, logger: logger)
        return (root.child("instancesSet")?.all("item") ?? []).map(Self.instance)
    }

    /// What RunInstances is told beside the image and the template: the role, user-data and network, and the two
    /// settings every instance of a fleet must have whatever a template says: IMDSv2 only with a hop limit of one
    /// (a container on the instance cannot reach the role's credentials), and `terminate` on shutdown (the worker's
    /// power-off ends its bill).
    public struct InstanceSettings: Sendable, Equatable {
        public var instanceProfile: String?
        /// The user-data as written (it is base64-encoded here).
        public var userData: String?
        public var subnetID: String?
        public var securityGroups: [String] = []
        public var keyName: String?

        public init(
            instanceProfile: String? = nil, userData: String? = nil, subnetID: String? = nil,
            securityGroups: [String] = [], keyName: String? = nil
        ) {
            self.instanceProfile = instanceProfile
            self.userData = userData
            self.subnetID = subnetID
            self.securityGroups = securityGroups
            self.keyName = keyName
        }

        func parameters() -> [(String, String)] {
            var parameters: [(String, String)] = [
                ("InstanceInitiatedShutdownBehavior", "terminate"), ("MetadataOptions.HttpTokens", "required"),
                ("MetadataOptions.HttpPutResponseHopLimit", "1"), ("MetadataOptions.HttpEndpoint", "enabled"),
            ]
            if let instanceProfile { parameters.append(("IamInstanceProfile.Name", instanceProfile)) }
            if let userData { parameters.append(("UserData", Data(userData.utf8).base64EncodedString())) }
            if let subnetID { parameters.append(("SubnetId", subnetID)) }
            for (i, group) in securityGroups.enumerated() { parameters.append(("SecurityGroupId.\(i + 1)", group)) }
            if let keyName { parameters.append(("KeyName", keyName)) }
            return parameters
        }
    }

    /// Tags as `TagSpecification`s, one per resource type (instances, and their volumes), under `prefix`.
    static func tagSpecification(
        _ tags: [String: String], resourceTypes: [String] = ["instance"], prefix: String = "TagSpecification"
    ) -> [(String, String)] {
        guard !tags.isEmpty else { return [] }
        var parameters: [(String, String)] = []
        for (n, type) in resourceTypes.enumerated() {
            parameters.append(("\(prefix).\(n + 1).ResourceType", type))
            for (i, tag) in tags.sorted(by: { $0.key < $1.key }).enumerated() {
                parameters.append(("\(prefix).\(n + 1).Tag.\(i + 1).Key", tag.key))
                parameters.append(("\(prefix).\(n + 1).Tag.\(i + 1).Value", tag.value))
            }
        }
        return parameters
    }

    /// Starts `count` instances from a launch template (its `$Default` version unless `version` says otherwise),
    /// with `tags` on top of the template's; `instanceType` and `settings` override the template's. Asks for between
    /// one and `count` (EC2 starts what it has capacity for), or with `allOrNothing` for exactly `count` or none.
    /// The shutdown behaviour is `terminate` whatever the template says: a worker's power-off must end its bill.
    /// `clientToken` makes a retried call (after a reply lost on the way) start nothing twice.
    public func runInstances(
        launchTemplate: String, version: String = "$Default", count: Int, allOrNothing: Bool = false,
        instanceType: String? = nil, settings: InstanceSettings = InstanceSettings(), tags: [String: String],
        clientToken: String = UUID().uuidString, logger: Logger
    ) async throws(AWSError) -> [EC2Instance] {
        var parameters: [(String, String)] = [
            ("LaunchTemplate.LaunchTemplateName", launchTemplate), ("LaunchTemplate.Version", version),
            ("MinCount", allOrNothing ? String(count) : "1"), ("MaxCount", String(count)), ("ClientToken", clientToken),
        ]
        if let instanceType { parameters.append(("InstanceType", instanceType)) }
        parameters += settings.parameters()
        parameters += Self.tagSpecification(tags, resourceTypes: ["instance", "volume"])
        let root = try await call("RunInstances", parameters, logger: logger)
        return (root.child("instancesSet")?.all("item") ?? []).map(Self.instance)
    }

    /// What an instant fleet started, and the pools it could not start in.
    public struct FleetLaunch: Sendable, Equatable {
        public var instanceIDs: [String]
        /// `code: message` per pool that failed (capacity, limits).
        public var errors: [String]
    }

    /// Starts `count` spot instances from a launch template with an instant EC2 Fleet, across every pool in
    /// `overrides` (instance type × subnet), `capacity-optimized`: one pool running dry does not stop the launch.
    public func createSpotFleet(
        launchTemplate: String, version: String = "$Default", overrides: [(instanceType: String?, subnetID: String?)],
        count: Int, tags: [String: String], clientToken: String = UUID().uuidString, logger: Logger
    ) async throws(AWSError) -> FleetLaunch {
        var parameters: [(String, String)] = [
            ("Type", "instant"), ("ClientToken", clientToken),
            ("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateName", launchTemplate),
            ("LaunchTemplateConfigs.1.LaunchTemplateSpecification.Version", version),
            ("TargetCapacitySpecification.TotalTargetCapacity", String(count)),
            ("TargetCapacitySpecification.DefaultTargetCapacityType", "spot"),
            ("SpotOptions.AllocationStrategy", "capacity-optimized"),
        ]
        for (i, override) in overrides.enumerated() {
            if let type = override.instanceType {
                parameters.append(("LaunchTemplateConfigs.1.Overrides.\(i + 1).InstanceType", type))
            }
            if let subnet = override.subnetID {
                parameters.append(("LaunchTemplateConfigs.1.Overrides.\(i + 1).SubnetId", subnet))
            }
        }
        parameters += Self.tagSpecification(tags)
        let root = try await call("CreateFleet", parameters, logger: logger)
        var ids: [String] = []
        for item in root.child("fleetInstanceSet")?.all("item") ?? [] {
            ids += (item.child("instanceIds")?.all("item") ?? []).map(\.text)
        }
        let errors = (root.child("errorSet")?.all("item") ?? []).map {
            "\($0["errorCode"] ?? "error"): \($0["errorMessage"] ?? "")"
        }
        return FleetLaunch(instanceIDs: ids, errors: errors)
    }
}

extension EC2Client {
    /// The names of the launch templates tagged `key` = `value`, all pages.
    public func launchTemplates(taggedWith key: String, value: String, logger: Logger) async throws(AWSError)
        -> [String]
    {
        var names: [String] = []
        var token: String?
        repeat {
            let root = try await call(
                "DescribeLaunchTemplates",
                [("Filter.1.Name", "tag:\(key)"), ("Filter.1.Value.1", value)]
                    + (token.map { [("NextToken", $0)] } ?? []), logger: logger)
            for item in root.child("launchTemplates")?.all("item") ?? [] {
                if let name = item["launchTemplateName"] { names.append(name) }
            }
            token = root["nextToken"].flatMap { $0.isEmpty ? nil : $0 }
        } while token != nil
        return names
    }

    public func deleteLaunchTemplate(name: String, logger: Logger) async throws(AWSError) {
        _ = try await call("DeleteLaunchTemplate", [("LaunchTemplateName", name)], logger: logger)
    }
}
