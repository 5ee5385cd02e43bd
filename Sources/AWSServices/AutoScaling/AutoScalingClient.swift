import AWSCore
import Logging

/// An Auto Scaling group as DescribeAutoScalingGroups reports it.
public struct AutoScalingGroup: Sendable, Equatable {
    public var name: String
    public var minSize: Int
    public var maxSize: Int
    public var desiredCapacity: Int
    /// The group's instances, by id, with their lifecycle state (`InService`, `Terminating`, ...).
    public var instances: [String: String]
    /// `Delete in progress` while the group is being deleted; nil otherwise.
    public var status: String? = nil
}

/// The few Auto Scaling calls a fleet needs: find the queue's group, let a drained worker leave it, and scale it to
/// zero, so that the group stops replacing workers that shut down because the work is done.
public struct AutoScalingClient: Sendable {
    public static let apiVersion = "2011-01-01"
    let query: QueryProtocol

    public init(context: AWSContext, region: String? = nil) throws(AWSError) {
        query = QueryProtocol(
            context: context, endpoint: try context.endpoint("autoscaling", region: region),
            version: Self.apiVersion)
    }

    /// The groups tagged `key` = `value`, all pages.
    public func groups(taggedWith key: String, value: String, logger: Logger) async throws(AWSError)
        -> [AutoScalingGroup]
    {
        let filter = [("Filters.member.1.Name", "tag:\(key)"), ("Filters.member.1.Values.member.1", value)]
        var result: [AutoScalingGroup] = []
        var token: String?
        repeat {
            let root = try await query.call(
                "DescribeAutoScalingGroups", filter + (token.map { [("NextToken", $0)] } ?? []),
                logger: logger)
            let body = root.child("DescribeAutoScalingGroupsResult")
            for member in body?.child("AutoScalingGroups")?.all("member") ?? [] {
                var instances: [String: String] = [:]
                for instance in member.child("Instances")?.all("member") ?? [] {
                    if let id = instance["InstanceId"] { instances[id] = instance["LifecycleState"] ?? "" }
                }
                result.append(
                    AutoScalingGroup(
                        name: member["AutoScalingGroupName"] ?? "", minSize: Int(member["MinSize"] ?? "") ?? 0,
                        maxSize: Int(member["MaxSize"] ?? "") ?? 0,
                        desiredCapacity: Int(member["DesiredCapacity"] ?? "") ?? 0,
                        instances: instances, status: member["Status"]))
            }
            token = body?["NextToken"].flatMap { $0.isEmpty ? nil : $0 }
        } while token != nil
        return result
    }

    /// Sets the number of instances the group keeps (its minimum must allow it).
    public func setDesiredCapacity(group: String, to capacity: Int, logger: Logger) async throws(AWSError) {
        _ = try await query.call(
            "SetDesiredCapacity",
            [
                ("AutoScalingGroupName", group), ("DesiredCapacity", String(capacity)), ("HonorCooldown", "false"),
            ], logger: logger)
    }

    /// Terminates an instance of a group. With `decrementDesiredCapacity` the group shrinks instead of starting a
    /// replacement: what a worker does when the queue is drained.
    public func terminateInstanceInGroup(
        _ instanceID: String, decrementDesiredCapacity: Bool,
        logger: Logger
    ) async throws(AWSError) {
        _ = try await query.call(
            "TerminateInstanceInAutoScalingGroup",
            [
                ("InstanceId", instanceID),
                ("ShouldDecrementDesiredCapacity", decrementDesiredCapacity ? "true" : "false"),
            ], logger: logger)
    }
}

extension AutoScalingClient {
    /// Sets the group's minimum and desired capacity to zero and deletes it with its instances (`ForceDelete`).
    public func deleteGroup(_ name: String, logger: Logger) async throws(AWSError) {
        _ = try await query.call(
            "UpdateAutoScalingGroup",
            [("AutoScalingGroupName", name), ("MinSize", "0"), ("DesiredCapacity", "0")], logger: logger)
        _ = try await query.call(
            "DeleteAutoScalingGroup", [("AutoScalingGroupName", name), ("ForceDelete", "true")], logger: logger)
    }
}

/// A group's instances: from a launch template over several instance types (the pools), on demand or spot.
public struct MixedInstancesPolicy: Sendable, Equatable {
    public var launchTemplate: String
    public var instanceTypes: [String]
    /// 100 for on demand, 0 for spot (capacity-optimized).
    public var onDemandPercentage: Int

    public init(launchTemplate: String, instanceTypes: [String], onDemandPercentage: Int) {
        self.launchTemplate = launchTemplate
        self.instanceTypes = instanceTypes
        self.onDemandPercentage = onDemandPercentage
    }

    func parameters() -> [(String, String)] {
        let p = "MixedInstancesPolicy"
        var parameters: [(String, String)] = [
            ("\(p).LaunchTemplate.LaunchTemplateSpecification.LaunchTemplateName", launchTemplate),
            // The template's latest version: `fleet launch` makes each new one the default too.
            ("\(p).LaunchTemplate.LaunchTemplateSpecification.Version", "$Latest"),
            ("\(p).InstancesDistribution.OnDemandBaseCapacity", "0"),
            ("\(p).InstancesDistribution.OnDemandPercentageAboveBaseCapacity", String(onDemandPercentage)),
            ("\(p).InstancesDistribution.SpotAllocationStrategy", "capacity-optimized"),
        ]
        for (i, type) in instanceTypes.enumerated() {
            parameters.append(("\(p).LaunchTemplate.Overrides.member.\(i + 1).InstanceType", type))
        }
        return parameters
    }
}

extension AutoScalingClient {
    /// The group called `name`, if there is one.
    public func group(named name: String, logger: Logger) async throws(AWSError) -> AutoScalingGroup? {
        let root = try await query.call(
            "DescribeAutoScalingGroups", [("AutoScalingGroupNames.member.1", name)], logger: logger)
        let member = root.child("DescribeAutoScalingGroupsResult")?.child("AutoScalingGroups")?.all("member").first
        return member.map {
            AutoScalingGroup(
                name: $0["AutoScalingGroupName"] ?? name, minSize: Int($0["MinSize"] ?? "") ?? 0,
                maxSize: Int($0["MaxSize"] ?? "") ?? 0, desiredCapacity: Int($0["DesiredCapacity"] ?? "") ?? 0,
                instances: [:], status: $0["Status"])
        }
    }

    /// Creates the group with `count` instances (minimum 0, so that drained workers may leave it), in `subnets`
    /// or else `zone`, tagged with `tags` (passed on to its instances).
    public func createGroup(
        _ name: String, count: Int, policy: MixedInstancesPolicy, subnets: [String], zone: String?,
        tags: [String: String], logger: Logger
    ) async throws(AWSError) {
        var parameters: [(String, String)] = [
            ("AutoScalingGroupName", name), ("MinSize", "0"), ("MaxSize", String(count)),
            ("DesiredCapacity", String(count)),
        ]
        parameters += policy.parameters()
        if !subnets.isEmpty {
            parameters.append(("VPCZoneIdentifier", subnets.joined(separator: ",")))
        } else if let zone {
            parameters.append(("AvailabilityZones.member.1", zone))
        }
        for (i, tag) in tags.sorted(by: { $0.key < $1.key }).enumerated() {
            parameters += [
                ("Tags.member.\(i + 1).Key", tag.key), ("Tags.member.\(i + 1).Value", tag.value),
                ("Tags.member.\(i + 1).PropagateAtLaunch", "true"),
            ]
        }
        _ = try await query.call("CreateAutoScalingGroup", parameters, logger: logger)
    }

    /// Sets an existing group to `count` instances over the policy's types.
    public func resizeGroup(_ name: String, count: Int, policy: MixedInstancesPolicy, logger: Logger)
        async throws(AWSError)
    {
        _ = try await query.call(
            "UpdateAutoScalingGroup",
            [
                ("AutoScalingGroupName", name), ("MinSize", "0"), ("MaxSize", String(count)),
                ("DesiredCapacity", String(count)),
            ] + policy.parameters(), logger: logger)
    }
}
