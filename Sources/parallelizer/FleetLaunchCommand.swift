import AWSCore
import AWSServices
import AWSSigV4
import ArgumentParser
@preconcurrency import Glibc
import Logging
import Operators
import Worker

/// What `fleet launch` and `fleet render` are told: the queue and its resources (from `scripts/setup-aws`'s
/// output, or one by one), the release, the market and the daemon's parameters.
struct LaunchOptions: ParsableArguments {
    @Option(help: "The KEY=VALUE lines scripts/setup-aws printed (queue, buckets, profiles, ledger, release, region).")
    var setup: String?

    @Option(help: "The queue (or from --setup); also the value of each instance's parallelizer:queue tag.")
    var queueURL: String?

    @Option(help: "The workers' instance profile (or from --setup).")
    var instanceProfile: String?

    @Option(help: "A release tarball (scripts/build-release) to upload to the release prefix and install on boot.")
    var releaseTarball: String?

    @Option(help: "Or a tarball already in S3, as s3://bucket/key (with --release-sha256).")
    var releaseS3: String?

    @Option(help: "The SHA-256 of --release-s3, which each instance checks.")
    var releaseSha256: String?

    @Option(help: "Instances to start.")
    var count: Int = 1

    @Option(
        help: """
            on-demand; spot (one instant EC2 Fleet over every type and subnet, capacity-optimized); asg (an Auto \
            Scaling group of on-demand instances) or asg-spot (a group of spot instances that replaces interrupted \
            ones).
            """)
    var market: String = "on-demand"

    @Option(help: "The instance type.")
    var instanceType: String = "c7i.large"

    @Option(help: "Several types, comma-separated (the first is the template's): spot and the groups spread over them.")
    var instanceTypes: String?

    @Option(help: "The image (default: the latest Amazon Linux 2023 for --arch, from SSM's public parameter).")
    var ami: String?

    @Option(help: "x86_64 or arm64.")
    var arch: String = "x86_64"

    @Option(help: "Subnet ids, comma-separated: spot and the groups use every one; on demand, the first.")
    var subnet: String?

    @Option(help: "A security group id.")
    var securityGroup: String?

    @Option(help: "An EC2 key pair's name, for SSH.")
    var keyName: String?

    @Option(help: "The root volume's size in GiB (gp3).")
    var volumeSize: Int?

    @Option(
        name: .customLong("set"),
        help:
            "A daemon parameter as key=value (docs/operations.md's table); repeatable. The queue, buckets and ledger come from --setup unless set here."
    )
    var settings: [String] = []

    @Flag(
        help: """
            Also start one small on-demand instance running `parallelizer controller` under systemd (the role of \
            setup-aws --controller): it keeps --target workers alive from the launch template on the same market, \
            retires stuck ones, stops the fleet after the drain, and then powers itself off.
            """)
    var controller = false

    @Option(help: "The controller's instance type (default t3.micro, or t4g.micro for arm64).")
    var controllerType: String?

    @Option(help: "The controller's instance profile (or CONTROLLER_PROFILE from --setup).")
    var controllerProfile: String?

    @Option(help: "Workers the controller keeps alive (default: --count).")
    var target: Int?

    @Option(
        help:
            "With --controller: a shell command the controller runs once the queue is drained and the fleet stopped (controller --on-complete)."
    )
    var onComplete: String?

    @Option(
        help: "Seconds an instance whose release cannot be installed stays up (to look over SSH) before it powers off.")
    var failedBootPause: Int = 600

    /// A problem with what was asked: said on stderr, exit status 2, nothing started.
    struct Refusal: Error {
        var message: String
    }

    func refuse(_ message: String) -> Refusal { Refusal(message: message) }

    static func fileName(_ path: String) -> String { String(path.split(separator: "/").last ?? "") }

    /// `--setup`'s KEY=VALUE lines (`scripts/setup-aws`'s output). An empty value is no value: setup-aws prints
    /// `CONTROLLER_PROFILE=` when it made no controller role.
    static func setupValues(_ setup: String?) throws -> [String: String] {
        guard let setup else { return [:] }
        guard let bytes = LocalFile.read(setup) else { throw Refusal(message: "cannot read --setup \(setup)") }
        var values: [String: String] = [:]
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
            guard let eq = line.firstIndex(of: "="), line[..<eq].allSatisfy({ $0.isUppercase || $0 == "_" }) else {
                continue
            }
            let value = String(line[line.index(after: eq)...])
            if !value.isEmpty { values[String(line[..<eq])] = value }
        }
        return values
    }

    /// The one region of every call, the release's and the daemon's: `--region`, else the queue URL's, else the
    /// set-up's, else the environment's and the profile's (`AWSContext.resolve`).
    static func region(global: GlobalOptions, queueURL: String?, setup: [String: String]) -> String? {
        global.region ?? queueURL.flatMap { SQSClient.region(ofQueueURL: $0) } ?? setup["REGION"]
    }

    func perform(global: GlobalOptions, renderOnly: Bool, logger: Logger) async throws {
        try await Self.refusalsExit2 { try await launch(global: global, renderOnly: renderOnly, logger: logger) }
    }

    /// Runs `body`; a refusal is said on stderr in one line and ends the command with exit status 2.
    static func refusalsExit2(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let refusal as Refusal {
            fputs("parallelizer fleet: \(refusal.message)\n", stderr)
            throw ExitCode(2)
        }
    }

    func launch(global: GlobalOptions, renderOnly: Bool, logger: Logger) async throws {
        let setup = try Self.setupValues(setup)
        guard let queueURL = queueURL ?? setup["QUEUE_URL"] else {
            throw refuse(
                "--queue-url (or --setup) is required (`parallelizer config render --set ...` prints only the parameters' map)"
            )
        }
        let profile = instanceProfile ?? setup["INSTANCE_PROFILE"]
        guard renderOnly || !(profile ?? "").isEmpty else {
            throw refuse("--instance-profile (or --setup) is required")
        }
        guard count >= 1 || (count == 0 && controller) else {
            throw refuse("--count must be a positive number (0 only with --controller: the controller alone)")
        }
        guard let market = FleetLaunch.Market(rawValue: market) else {
            throw refuse("--market must be on-demand, spot, asg or asg-spot")
        }
        guard ["x86_64", "arm64"].contains(arch) else { throw refuse("--arch must be x86_64 or arm64") }
        guard releaseTarball == nil || releaseS3 == nil else {
            throw refuse("give --release-tarball or --release-s3, not both")
        }
        guard releaseTarball != nil || releaseS3 != nil else {
            throw refuse("one of --release-tarball or --release-s3 is required")
        }
        if let releaseS3 {
            guard let uri = S3URI(releaseS3), !uri.key.isEmpty, !uri.key.hasSuffix("/") else {
                throw refuse("--release-s3 wants s3://bucket/key of the tarball, got \(releaseS3)")
            }
            guard let sha = releaseSha256, sha.count == 64, sha.allSatisfy(\.isHexDigit) else {
                throw refuse("--release-s3 needs --release-sha256 (64 hex digits)")
            }
        }
        let controllerProfile = controllerProfile ?? setup["CONTROLLER_PROFILE"]
        if controller && (controllerProfile ?? "").isEmpty && !renderOnly {
            throw refuse(
                "--controller needs the role of setup-aws --controller (CONTROLLER_PROFILE in --setup, or --controller-profile)"
            )
        }
        if let target, target < 1 { throw refuse("--target must be a positive number") }
        if count == 0 && target == nil && !market.isGroup {
            throw refuse("--count 0 --controller needs --target N: the workers the controller keeps")
        }
        guard failedBootPause >= 0 else { throw refuse("--failed-boot-pause must be 0 or more seconds") }
        if let onComplete {
            guard controller else { throw refuse("--on-complete is the controller's: add --controller") }
            // One line of the unit's ExecStart: a line break or a control character would end or garble it.
            guard !onComplete.isEmpty,
                !onComplete.unicodeScalars.contains(where: {
                    $0.properties.generalCategory == .control || $0 == "\u{2028}" || $0 == "\u{2029}"
                })
            else { throw refuse("--on-complete must be one line of text (a script on the image can hold more)") }
        }
        if let volumeSize, volumeSize < 1 { throw refuse("--volume-size must be a positive number of GiB") }
        let types = instanceTypes.map { $0.split(separator: ",").map(String.init) } ?? [instanceType]
        let subnets = subnet.map { $0.split(separator: ",").map(String.init) } ?? []

        let context = try await AWSContext.resolve(
            environment: ProcessEnvironment.current(),
            region: Self.region(global: global, queueURL: queueURL, setup: setup), order: .awsCLI, logger: logger)

        // The parameters, checked and rendered by the daemon's own rules before anything is uploaded or started.
        var pairs: [(key: String, value: String)] = [("queueURL", queueURL)]
        for (key, name) in [
            ("INPUT_BUCKET", "inputBucket"), ("OUTPUT_BUCKET", "outputBucket"),
            // Where environmentZip is (the input bucket unless setup-aws was given another).
            ("ENVIRONMENT_BUCKET", "environmentBucket"), ("LEDGER_TABLE", "ledgerTable"),
        ] {
            if let value = setup[key] { pairs.append((name, value)) }
        }
        pairs.append(("region", context.region))
        // A group's workers leave it when the queue is drained, so it shrinks instead of replacing them with idle
        // ones.
        if market.isGroup { pairs.append(("autoScalingGroup", Controller.launchTemplateName(queueURL: queueURL))) }
        for setting in settings {
            guard let pair = keyValue(setting) else { throw refuse("--set wants key=value, got '\(setting)'") }
            pairs.append(pair)
        }
        let parameters: String
        let config: WorkerConfig
        do {
            (parameters, config) = try UserDataRenderer.render(pairs)
        } catch {
            throw refuse("the parameters are refused: \(error)")
        }

        // The release: uploaded beside the outputs (or where setup-aws's RELEASE says), and presigned for a week
        // (SigV4's longest) for images without the AWS CLI; the role's own read access is tried first.
        let s3 = try S3Client(context: context)
        let release: S3URI
        let sha256: String
        if let tarball = releaseTarball {
            guard let size = LocalFile.size(tarball) else { throw refuse("no such tarball: \(tarball)") }
            let prefix = setup["RELEASE"] ?? "s3://\(config.outputBucket)/_release/"
            guard let base = S3URI(prefix.hasSuffix("/") ? prefix : prefix + "/") else {
                throw refuse("RELEASE in --setup wants s3://bucket/prefix/, got \(prefix)")
            }
            release = S3URI(bucket: base.bucket, key: base.key + Self.fileName(tarball))
            sha256 = try await FileDigest.compute(path: tarball, length: size, algorithm: .sha256).hexString
        } else {
            release = S3URI(releaseS3!)!
            sha256 = releaseSha256!.lowercased()
            // A release that is not there would boot every instance into the install script's failure pause.
            if !renderOnly, try await s3.headObject(bucket: release.bucket, key: release.key, logger: logger) == nil {
                throw refuse("no release at \(release): upload it first, or give --release-tarball")
            }
        }
        let url = try await s3.presignedGetURL(
            bucket: release.bucket, key: release.key, expires: 604_800, logger: logger)

        var plan = FleetLaunch.Plan(
            queueURL: queueURL, instanceProfile: profile ?? "", count: count, userData: "")
        plan.market = market
        plan.instanceTypes = types
        plan.imageID = ami
        plan.arch = arch
        plan.subnets = subnets
        plan.securityGroup = securityGroup
        plan.keyName = keyName
        plan.volumeGiB = volumeSize
        let boot: BootScript
        do {
            boot = try BootScript(
                release: .init(s3URI: release.description, presignedURL: url, sha256: sha256),
                failedBootPause: failedBootPause)
            plan.userData = try boot.worker(parameters: parameters, shutdownGrace: config.shutdownGrace)
            if controller {
                // The controller boots the workers' image and release: its type is of their architecture.
                let arguments = FleetLaunch.controllerArguments(
                    plan, target: target ?? count, ledgerTable: config.ledgerTable, onComplete: onComplete)
                plan.controller = FleetLaunch.ControllerInstance(
                    instanceProfile: controllerProfile ?? "",
                    instanceType: controllerType ?? (arch == "arm64" ? "t4g.micro" : "t3.micro"),
                    userData: try boot.controller(arguments: arguments))
            }
        } catch {
            throw refuse(error.description)
        }
        // Uploaded only now: everything that can be refused before it has been.
        if let tarball = releaseTarball, !renderOnly {
            try await s3.putObject(bucket: release.bucket, key: release.key, file: tarball, logger: logger)
            fputs("  uploaded \(Self.fileName(tarball)) to \(release)\n", stderr)
        }
        if renderOnly {
            print(plan.userData, terminator: plan.userData.hasSuffix("\n") ? "" : "\n")
            if let controller = plan.controller {
                print("--- the controller's user-data")
                print(controller.userData, terminator: controller.userData.hasSuffix("\n") ? "" : "\n")
            }
            return
        }
        let fleet = FleetLaunch(
            ec2: try EC2Client(context: context), autoscaling: try AutoScalingClient(context: context),
            ssm: try SSMClient(context: context))
        _ = try await fleet.run(
            plan, say: { fputs("  \($0)\n", stderr) },
            started: { id in
                print(id)
                fflush(stdout)
            }, logger: logger)
    }
}
