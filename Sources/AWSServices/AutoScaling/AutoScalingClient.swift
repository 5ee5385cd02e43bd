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
