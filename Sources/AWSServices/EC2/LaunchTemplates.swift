import AWSCore
import FoundationEssentials
import Logging

/// What a launch template holds for a fleet's workers: what RunInstances would be told, kept in one place so that
/// every market (on demand, a spot fleet, an Auto Scaling group) and the controller's replacements start the same
/// instance.
public struct LaunchTemplateData: Sendable {
    public var imageID: String
    public var instanceType: String
    public var instanceProfile: String
    /// The user-data as written (it is base64-encoded here).
    public var userData: String
    public var securityGroups: [String] = []
    public var keyName: String?
    /// A root volume of this many GiB (gp3, deleted with the instance) on the image's root device.
    public var rootVolume: (device: String, gib: Int)?
    /// Tags for the instances and their volumes.
    public var tags: [String: String] = [:]

    public init(imageID: String, instanceType: String, instanceProfile: String, userData: String) {
        self.imageID = imageID
        self.instanceType = instanceType
        self.instanceProfile = instanceProfile
        self.userData = userData
    }

    /// As the query protocol spells `LaunchTemplateData`: IMDSv2 only with a hop limit of one, terminate on
    /// shutdown, the role, and the tags on instances and volumes.
    func parameters() -> [(String, String)] {
        let p = "LaunchTemplateData"
        var parameters: [(String, String)] = [
            ("\(p).ImageId", imageID), ("\(p).InstanceType", instanceType),
            ("\(p).IamInstanceProfile.Name", instanceProfile),
            ("\(p).UserData", Data(userData.utf8).base64EncodedString()),
            ("\(p).InstanceInitiatedShutdownBehavior", "terminate"),
            ("\(p).MetadataOptions.HttpTokens", "required"), ("\(p).MetadataOptions.HttpPutResponseHopLimit", "1"),
            ("\(p).MetadataOptions.HttpEndpoint", "enabled"),
        ]
        for (i, group) in securityGroups.enumerated() { parameters.append(("\(p).SecurityGroupId.\(i + 1)", group)) }
        if let keyName { parameters.append(("\(p).KeyName", keyName)) }
        if let rootVolume {
            parameters += [
                ("\(p).BlockDeviceMapping.1.DeviceName", rootVolume.device),
                ("\(p).BlockDeviceMapping.1.Ebs.VolumeSize", String(rootVolume.gib)),
                ("\(p).BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
                ("\(p).BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
            ]
        }
        parameters += EC2Client.tagSpecification(
            tags, resourceTypes: ["instance", "volume"], prefix: "\(p).TagSpecification")
        return parameters
    }
}

extension EC2Client {
    /// Records `data` as the launch template `name`: a new template (tagged with `tags`), or a new version of the
    /// one there, made its default, so that every later launch and replacement starts what was asked last.
    /// Returns the version that is now the default.
    public func putLaunchTemplate(
        name: String, data: LaunchTemplateData, tags: [String: String], logger: Logger
    ) async throws(AWSError) -> (version: Int, created: Bool) {
        do throws(AWSError) {
            let root = try await call(
                "CreateLaunchTemplateVersion", [("LaunchTemplateName", name)] + data.parameters(), logger: logger)
            guard let number = root.child("launchTemplateVersion")?["versionNumber"].flatMap({ Int($0) }) else {
                throw AWSError.badResponse("ec2", "CreateLaunchTemplateVersion reply has no versionNumber")
            }
            // ModifyLaunchTemplate's default is a version number, not `$Latest`.
            _ = try await call(
                "ModifyLaunchTemplate", [("LaunchTemplateName", name), ("SetDefaultVersion", String(number))],
                logger: logger)
            return (number, false)
        } catch  where error.code.hasPrefix("InvalidLaunchTemplateName.NotFound") {
            // EC2 answers `InvalidLaunchTemplateName.NotFoundException` (and an `Id` variant) for a template that
            // is not there yet.
        }
        _ = try await call(
            "CreateLaunchTemplate",
            [("LaunchTemplateName", name)] + data.parameters()
                + Self.tagSpecification(tags, resourceTypes: ["launch-template"]),
            logger: logger)
        return (1, true)
    }

    /// The root device's name of an image (`/dev/xvda` on Amazon Linux), where a bigger root volume is mapped.
    public func rootDeviceName(imageID: String, logger: Logger) async throws(AWSError) -> String {
        let root = try await call("DescribeImages", [("ImageId.1", imageID)], logger: logger)
        guard let device = root.child("imagesSet")?.all("item").first?["rootDeviceName"] else {
            throw AWSError(
                kind: .service, service: "ec2", code: "InvalidAMIID.NotFound",
                message: "no image \(imageID) (or it has no root device)")
        }
        return device
    }

    /// The region's first availability zone that is available: where an Auto Scaling group without subnets goes.
    /// Only zones proper: an opted-in Local or Wavelength Zone (`us-west-2-lax-1a` sorts first) has no default
    /// subnet and few instance types.
    public func firstAvailabilityZone(logger: Logger) async throws(AWSError) -> String {
        let root = try await call(
            "DescribeAvailabilityZones",
            [
                ("Filter.1.Name", "state"), ("Filter.1.Value.1", "available"), ("Filter.2.Name", "zone-type"),
                ("Filter.2.Value.1", "availability-zone"),
            ], logger: logger)
        guard let zone = root.child("availabilityZoneInfo")?.all("item").compactMap({ $0["zoneName"] }).sorted().first
        else {
            throw AWSError.badResponse("ec2", "DescribeAvailabilityZones lists no zone")
        }
        return zone
    }
}
