import AWSCore
import AWSServices
import FoundationEssentials
import Testing
import TestSupport
import Worker

/// The operator's provisioning against moto, as on AWS: `setup-aws` (bash over the AWS CLI), and `parallelizer fleet
/// launch|render|stop` (with `scripts/launch` and `scripts/teardown`, their thin wrappers).
@Suite(.enabled(if: TestEnvironment.canRun(.moto)))
struct ProvisioningScriptTests {
    static func keyValues(_ text: String) -> [String: String] {
        var result: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            result[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        return result
    }

    /// A release tarball holding the binary under test, as scripts/build-release lays it out.
    static func makeTarball(in directory: String, environment: [String: String]) async throws -> String {
        let folder = "\(directory)/parallelizer-0.0.0-linux-test"
        _ = try await Scripts.run("/bin/mkdir", ["-p", folder], environment: environment, directory: directory)
        _ = try await Scripts.run(
            "/bin/cp", [WorkerHarness.binary, folder + "/parallelizer"], environment: environment,
            directory: directory)
        let tarball = folder + ".tar.gz"
        let tar = try await Scripts.run(
            "/bin/tar", ["-czf", tarball, "-C", directory, "parallelizer-0.0.0-linux-test"],
            environment: environment, directory: directory)
        #expect(tar.succeeded, "\(tar.stderr)")
        return tarball
    }

    @Test func setupCreatesLeastPrivilegeResourcesAndASecondRunChangesNothing() async throws {
        try await withTemporaryDirectory { dir in
            let environment = try Scripts.motoEnvironment(in: dir)
            let moto = try TestEnvironment.endpoint(.moto)
            let name = uniqueName("pzs")
            let arguments = [
                "--name", name, "--input-bucket", "\(name)-in", "--output-bucket", "\(name)-out",
                "--ledger-table", "\(name)-ledger", "--visibility-timeout", "300",
                "--max-attempts", "3", "--max-receive-count", "4", "--controller", "--endpoint-url", moto,
            ]
            let first = try await Scripts.run("setup-aws", arguments, environment: environment, directory: dir)
            #expect(first.succeeded, "\(first.stderr)")
            #expect(first.stderr.contains("created"))
            let made = Self.keyValues(first.stdout)
            let queueURL = try #require(made["QUEUE_URL"])
            let dlqURL = try #require(made["DLQ_URL"])
            #expect(made["INSTANCE_PROFILE"] == "\(name)-worker")

            // The queue: visibility, 14 days, long polling, and a redrive policy naming the dead-letter queue.
            let context = try TestEnvironment.motoContext()
            let sqs = SQSClient(context: context)
            let attributes = try await sqs.getQueueAttributes(queueURL: queueURL, logger: quietLogger)
            #expect(attributes["VisibilityTimeout"] == "300")
            #expect(attributes["MessageRetentionPeriod"] == "1209600")
            #expect(attributes["ReceiveMessageWaitTimeSeconds"] == "20")
            let dlq = try await sqs.getQueueAttributes(queueURL: dlqURL, logger: quietLogger)
            let redrive = try JSONValue.parse(try #require(attributes["RedrivePolicy"]))
            #expect(redrive["deadLetterTargetArn"]?.stringValue == dlq["QueueArn"])
            #expect(redrive["maxReceiveCount"]?.intValue == 4 || redrive["maxReceiveCount"]?.stringValue == "4")
            #expect(dlq["MessageRetentionPeriod"] == "1209600")

            // Buckets exist (a listing succeeds); the ledger table is on-demand with the ledger's key schema.
            let s3 = try S3Client(context: context)
            for bucket in ["\(name)-in", "\(name)-out"] {
                _ = try await s3.listObjectsV2(bucket: bucket, logger: quietLogger)
            }
            let table = try await Scripts.awsCLI(
                ["dynamodb", "describe-table", "--table-name", "\(name)-ledger"], directory: dir)
            #expect(table["Table"]?["BillingModeSummary"]?["BillingMode"]?.stringValue == "PAY_PER_REQUEST")
            let keys = table["Table"]?["KeySchema"]?.arrayValue?.compactMap { $0["AttributeName"]?.stringValue }
            #expect(keys == ["queue", "task"])

            // The role trusts EC2 only, and its one policy names only these buckets, this queue and this table.
            let role = try await Scripts.awsCLI(["iam", "get-role", "--role-name", "\(name)-worker"], directory: dir)
            #expect(role["Role"]?["AssumeRolePolicyDocument"]?.serialized.contains("ec2.amazonaws.com") == true)
            let policy = try await Scripts.awsCLI(
                [
                    "iam", "get-role-policy", "--role-name", "\(name)-worker",
                    "--policy-name", "\(name)-worker-access",
                ], directory: dir)
            let statements = try #require(policy["PolicyDocument"]?["Statement"]?.arrayValue)
            var actions: Set<String> = []
            for statement in statements {
                #expect(statement["Effect"]?.stringValue == "Allow")
                for resource in statement["Resource"]?.arrayValue ?? [] {
                    let arn = try #require(resource.stringValue)
                    #expect(arn.contains(name), "a resource outside this fleet: \(arn)")
                    #expect(arn != "*")
                }
                for action in statement["Action"]?.arrayValue ?? [] { actions.insert(action.stringValue ?? "") }
            }
            #expect(
                actions.isSuperset(of: [
                    "s3:GetObject", "s3:PutObject", "sqs:ReceiveMessage", "sqs:DeleteMessage",
                    "sqs:ChangeMessageVisibility", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:Query",
                ]))
            #expect(!actions.contains { $0.hasSuffix("*") || $0.hasPrefix("iam:") || $0.hasPrefix("ec2:") })
            let profile = try await Scripts.awsCLI(
                ["iam", "get-instance-profile", "--instance-profile-name", "\(name)-worker"],
                directory: dir)
            #expect(
                profile["InstanceProfile"]?["Roles"]?.arrayValue?.first?["RoleName"]?.stringValue == "\(name)-worker")

            // The controller's role: it may terminate only instances tagged with this queue, hand out only the
            // workers' role, and read only this ledger.
            #expect(made["CONTROLLER_PROFILE"] == "\(name)-controller")
            let controllerPolicy = try await Scripts.awsCLI(
                [
                    "iam", "get-role-policy", "--role-name", "\(name)-controller",
                    "--policy-name", "\(name)-controller-access",
                ], directory: dir)
            let controllerStatements = try #require(controllerPolicy["PolicyDocument"]?["Statement"]?.arrayValue)
            func statement(_ action: String) -> JSONValue? {
                controllerStatements.first { $0["Action"]?.arrayValue?.contains(.string(action)) == true }
            }
            #expect(
                statement("ec2:TerminateInstances")?["Condition"]?["StringEquals"]?[
                    "ec2:ResourceTag/parallelizer:queue"]?
                    .stringValue == queueURL)
            #expect(
                statement("iam:PassRole")?["Resource"]?.arrayValue?.first?.stringValue?.hasSuffix("/\(name)-worker")
                    == true)
            #expect(
                statement("dynamodb:Query")?["Resource"]?.arrayValue?.first?.stringValue?.hasSuffix("/\(name)-ledger")
                    == true)
            #expect(statement("ec2:RunInstances") != nil && statement("ec2:CreateFleet") != nil)
            // The completion hook: its claim in the ledger, the run on the queue's tags, the dead letters' count.
            #expect(
                statement("dynamodb:PutItem")?["Action"]?.arrayValue?.contains(.string("dynamodb:UpdateItem")) == true)
            #expect(
                statement("sqs:ListQueueTags")?["Resource"]?.arrayValue?.first?.stringValue?.hasSuffix(":\(name)")
                    == true)
            #expect(
                controllerStatements.contains {
                    $0["Sid"]?.stringValue == "CountTheDeadLetters"
                        && $0["Resource"]?.arrayValue?.first?.stringValue?.hasSuffix("-dlq") == true
                }, "\(controllerStatements)")

            // The output bucket's clean-up: unfinished multipart uploads after 7 days, the daemon's release notes after
            // 15 (a message lives 14 at most); a rule of the operator's own is kept beside them.
            let outputBucket = try #require(made["OUTPUT_BUCKET"])
            func ruleIDs() async throws -> Set<String> {
                let rules = try await Scripts.awsCLI(
                    ["s3api", "get-bucket-lifecycle-configuration", "--bucket", outputBucket], directory: dir)
                return Set((rules["Rules"]?.arrayValue ?? []).compactMap { $0["ID"]?.stringValue })
            }
            #expect(try await ruleIDs() == ["parallelizer-abort-multipart", "parallelizer-release-notes"])

            // Again: everything is reported unchanged, and the same values come out.
            let second = try await Scripts.run("setup-aws", arguments, environment: environment, directory: dir)
            #expect(second.succeeded, "\(second.stderr)")
            let lines = second.stderr.split(separator: "\n")
            #expect(lines.count >= 10)
            #expect(lines.allSatisfy { $0.hasSuffix("unchanged") }, "\(second.stderr)")
            #expect(second.stdout == first.stdout)
        }
    }

    @Test func launchStartsTaggedIMDSv2InstancesAndTeardownTouchesOnlyThem() async throws {
        try await withTemporaryDirectory { dir in
            let environment = try Scripts.motoEnvironment(in: dir)
            let moto = try TestEnvironment.endpoint(.moto)
            let name = uniqueName("pzl")
            let setup = try await Scripts.run(
                "setup-aws",
                [
                    "--name", name, "--input-bucket", "\(name)-in",
                    "--output-bucket", "\(name)-out", "--controller", "--endpoint-url", moto,
                ],
                environment: environment, directory: dir)
            #expect(setup.succeeded, "\(setup.stderr)")
            let setupFile = "\(dir)/setup.env"
            LocalFile.write(setupFile, Array(setup.stdout.utf8))
            let queueURL = try #require(Self.keyValues(setup.stdout)["QUEUE_URL"])
            let tarball = try await Self.makeTarball(in: dir, environment: environment)
            let common = [
                "--setup", setupFile, "--release-tarball", tarball, "--set", "analysisProgram=bin/run.sh --fast",
                "--endpoint-url", moto,
            ]

            // Refused before the release is uploaded: --controller with the empty role setup-aws prints without
            // --controller of its own, and user-data over EC2's 16 KiB.
            let noRole = "\(dir)/no-controller-role.env"
            LocalFile.write(
                noRole,
                Array(
                    setup.stdout.split(separator: "\n").map {
                        $0.hasPrefix("CONTROLLER_PROFILE=") ? "CONTROLLER_PROFILE=" : $0
                    }
                    .joined(separator: "\n").utf8))
            for (arguments, says) in [
                (["--setup", noRole, "--controller"], "--controller needs the role"),
                (["--set", "analysisProgram=" + String(repeating: "x", count: 17000)], "EC2 allows 16384"),
                (["--count", "0", "--controller"], "--target"),
                (["--on-complete", "notify"], "--on-complete is the controller's"),
                (["--controller", "--on-complete", "notify\nrm -rf /"], "--on-complete must be one line"),
            ] {
                let refused = try await Scripts.run(
                    "launch", common + arguments, environment: environment, directory: dir)
                #expect(refused.status == 2, "\(arguments.prefix(3)): \(refused.stderr)")
                #expect(refused.stderr.contains(says), "\(refused.stderr)")
            }
            let s3 = try S3Client(context: try TestEnvironment.motoContext())
            let releaseKey = "_release/parallelizer-0.0.0-linux-test.tar.gz"
            #expect(
                try await s3.headObject(bucket: "\(name)-out", key: releaseKey, logger: quietLogger) == nil,
                "a refused launch uploaded the release")

            // Two on demand, and the controller that keeps them at size, on an instance of its own.
            let onDemand = try await Scripts.run(
                "launch",
                common + ["--count", "2", "--controller", "--on-complete", #"notify "$PARALLELIZER_TASKS_DONE" 50%"#],
                environment: environment, directory: dir)
            #expect(onDemand.succeeded, "\(onDemand.stderr)")
            let controllers = try await Scripts.awsCLI(
                ["ec2", "describe-instances", "--filters", "Name=tag:parallelizer:controller,Values=\(queueURL)"],
                directory: dir)
            let controller = try #require(
                controllers["Reservations"]?.arrayValue?.first?["Instances"]?.arrayValue?.first)
            // Not tagged as a worker: the controller never stops itself.
            #expect(
                controller["Tags"]?.arrayValue?.contains { $0["Key"]?.stringValue == "parallelizer:queue" } == false)
            let controllerUserData = try await Scripts.awsCLI(
                [
                    "ec2", "describe-instance-attribute", "--instance-id",
                    controller["InstanceId"]?.stringValue ?? "", "--attribute", "userData",
                ], directory: dir)
            let controllerBoot = String(
                decoding: try #require(
                    Data(base64Encoded: controllerUserData["UserData"]?["Value"]?.stringValue ?? "")), as: UTF8.self)
            #expect(
                controllerBoot.contains(
                    "ExecStart=/usr/local/bin/parallelizer controller --queue-url \(queueURL) --on-complete 'notify \"$$PARALLELIZER_TASKS_DONE\" 50%%' --target 2 --market on-demand"
                ), "\(controllerBoot)")
            #expect(
                controllerBoot.contains("parallelizer-install"), "the controller installs the release as workers do")
            // Spot: one instant fleet over two types, from the binary itself (the wrapper only finds it and sets the
            // endpoint).
            var direct = environment
            direct["AWS_ENDPOINT_URL"] = moto
            let binaryCommon = Array(common.dropLast(2))
            let spot = try await Scripts.run(
                WorkerHarness.binary,
                ["fleet", "launch"] + binaryCommon + ["--market", "spot", "--instance-types", "t3.micro,t3a.micro"],
                environment: direct, directory: dir)
            #expect(spot.succeeded, "\(spot.stderr)")
            let ours = (onDemand.stdout + spot.stdout).split(separator: "\n").map(String.init)
            #expect(ours.count == 3)
            // Every market starts from the queue's launch template, which the controller launches replacements from.
            let template = try await Scripts.awsCLI(
                ["ec2", "describe-launch-templates", "--launch-template-names", "parallelizer-\(name)"], directory: dir)
            #expect(template["LaunchTemplates"]?.arrayValue?.count == 1)

            // The release went to the release prefix.
            #expect(try await s3.headObject(bucket: "\(name)-out", key: releaseKey, logger: quietLogger) != nil)

            // The controller alone (its workers already run): no worker starts, a second controller does.
            let alone = try await Scripts.run(
                WorkerHarness.binary,
                ["fleet", "launch"] + binaryCommon + ["--count", "0", "--controller", "--target", "2"],
                environment: direct, directory: dir)
            #expect(alone.succeeded && alone.stdout.isEmpty, "\(alone.stdout) \(alone.stderr)")
            let controllersNow = try await Scripts.awsCLI(
                ["ec2", "describe-instances", "--filters", "Name=tag:parallelizer:controller,Values=\(queueURL)"],
                directory: dir)
            let controllerIDs = (controllersNow["Reservations"]?.arrayValue ?? []).flatMap {
                $0["Instances"]?.arrayValue?.compactMap { $0["InstanceId"]?.stringValue } ?? []
            }
            #expect(controllerIDs.count == 2, "\(controllerIDs)")

            // Each: tagged with the queue, IMDSv2 required, terminate on shutdown, user-data the daemon reads back.
            let described = try await Scripts.awsCLI(
                ["ec2", "describe-instances", "--instance-ids"] + ours, directory: dir)
            let instances = described["Reservations"]?.arrayValue?.flatMap { $0["Instances"]?.arrayValue ?? [] } ?? []
            #expect(instances.count == 3)
            for instance in instances {
                let tags = instance["Tags"]?.arrayValue ?? []
                #expect(
                    tags.contains {
                        $0["Key"]?.stringValue == "parallelizer:queue" && $0["Value"]?.stringValue == queueURL
                    })
                // moto's CreateFleet leaves the template's MetadataOptions off its instances (EC2 applies them):
                // for the spot one, the template itself is checked below.
                if instance["InstanceLifecycle"]?.stringValue != "spot" {
                    #expect(instance["MetadataOptions"]?["HttpTokens"]?.stringValue == "required")
                }
                // (moto does not report the instance profile given to RunInstances, so it is not checked here.)
            }
            #expect(instances.filter { $0["InstanceLifecycle"]?.stringValue == "spot" }.count == 1)
            let defaultVersion = try await Scripts.awsCLI(
                [
                    "ec2", "describe-launch-template-versions", "--launch-template-name", "parallelizer-\(name)",
                    "--versions", "$Default",
                ], directory: dir)
            let defaultData = defaultVersion["LaunchTemplateVersions"]?.arrayValue?.first?["LaunchTemplateData"]
            #expect(defaultData?["MetadataOptions"]?["HttpTokens"]?.stringValue == "required")
            #expect(defaultData?["InstanceInitiatedShutdownBehavior"]?.stringValue == "terminate")
            #expect(defaultData?["IamInstanceProfile"]?["Name"]?.stringValue != nil)
            let behaviour = try await Scripts.awsCLI(
                [
                    "ec2", "describe-instance-attribute", "--instance-id", ours[0],
                    "--attribute", "instanceInitiatedShutdownBehavior",
                ], directory: dir)
            #expect(behaviour["InstanceInitiatedShutdownBehavior"]?["Value"]?.stringValue == "terminate")
            let userDataAttribute = try await Scripts.awsCLI(
                [
                    "ec2", "describe-instance-attribute", "--instance-id", ours[0],
                    "--attribute", "userData",
                ], directory: dir)
            let encoded = try #require(userDataAttribute["UserData"]?["Value"]?.stringValue)
            let userData = String(decoding: try #require(Data(base64Encoded: encoded)), as: UTF8.self)
            let (config, _) = try WorkerConfig.resolve(
                [ConfigLayer(source: "user-data", values: try UserData.parse(userData))],
                cores: 2)
            #expect(config.queueURL == queueURL)
            #expect(config.inputBucket == "\(name)-in" && config.outputBucket == "\(name)-out")
            #expect(config.analysisProgram == ["bin/run.sh", "--fast"])
            #expect(
                userData.contains("X-Amz-Signature="), "the release URL is signed with SigV4 by the release's binary")

            // An Auto Scaling group of two from a launch template. (From a template made afresh: moto's Auto Scaling
            // cannot start instances from a template version added by CreateLaunchTemplateVersion, whose user-data
            // it keeps in another type and then asserts on; EC2 itself and RunInstances take it.)
            _ = try await Scripts.awsCLI(
                ["ec2", "delete-launch-template", "--launch-template-name", "parallelizer-\(name)"], directory: dir)
            let group = try await Scripts.run(
                WorkerHarness.binary,
                ["fleet", "launch"] + binaryCommon + [
                    "--market", "asg-spot", "--count", "2", "--instance-types", "t3.micro,t3a.micro",
                    "--volume-size", "20",
                ], environment: direct, directory: dir)
            #expect(group.succeeded, "\(group.stderr)")
            let groups = try await Scripts.awsCLI(
                [
                    "autoscaling", "describe-auto-scaling-groups", "--auto-scaling-group-names",
                    "parallelizer-\(name)",
                ], directory: dir)
            let theGroup = groups["AutoScalingGroups"]?.arrayValue?.first
            #expect(theGroup?["DesiredCapacity"]?.intValue == 2)
            // Spot over both types, capacity-optimized: one pool running dry does not stop the group.
            let policy = theGroup?["MixedInstancesPolicy"]
            #expect(
                policy?["LaunchTemplate"]?["Overrides"]?.arrayValue?.compactMap { $0["InstanceType"]?.stringValue }
                    == ["t3.micro", "t3a.micro"], "\(groups)")
            #expect(policy?["InstancesDistribution"]?["OnDemandPercentageAboveBaseCapacity"]?.intValue == 0)
            #expect(policy?["InstancesDistribution"]?["SpotAllocationStrategy"]?.stringValue == "capacity-optimized")
            // Its workers are told their group, so that a drained one leaves it rather than being replaced.
            let versions = try await Scripts.awsCLI(
                [
                    "ec2", "describe-launch-template-versions", "--launch-template-name",
                    "parallelizer-\(name)", "--versions", "$Latest",
                ], directory: dir)
            let templateData = try #require(
                versions["LaunchTemplateVersions"]?.arrayValue?.first?["LaunchTemplateData"])
            let groupUserData = String(
                decoding: try #require(Data(base64Encoded: templateData["UserData"]?.stringValue ?? "")),
                as: UTF8.self)
            // A bigger root volume, on the image's own root device (DescribeImages), deleted with the instance.
            let volume = templateData["BlockDeviceMappings"]?.arrayValue?.first
            #expect(volume?["DeviceName"]?.stringValue?.hasPrefix("/dev/") == true, "\(templateData)")
            #expect(volume?["Ebs"]?["VolumeSize"]?.intValue == 20)
            #expect(volume?["Ebs"]?["DeleteOnTermination"]?.boolValue == true)
            let (groupConfig, _) = try WorkerConfig.resolve(
                [ConfigLayer(source: "user-data", values: try UserData.parse(groupUserData))], cores: 2)
            #expect(groupConfig.autoScalingGroup == "parallelizer-\(name)")
            #expect(config.autoScalingGroup == nil, "on-demand workers belong to no group")

            // Bystanders: an untagged instance and one of another queue.
            let ec2 = try EC2Client(context: try TestEnvironment.motoContext())
            let image = try #require(instances.first?["ImageId"]?.stringValue)
            let untagged = try await ec2.runInstances(imageID: image, count: 1, logger: quietLogger)
            let other = try await ec2.runInstances(
                imageID: image, count: 1, tags: ["parallelizer:queue": queueURL + "-other"],
                logger: quietLogger)
            let bystanders = (untagged + other).map(\.instanceID)

            let dry = try await Scripts.run(
                "teardown", ["--setup", setupFile, "--dry-run", "--endpoint-url", moto],
                environment: environment, directory: dir)
            #expect(dry.succeeded, "\(dry.stderr)")
            let stillRunning = try await ec2.describeInstances(instanceIDs: ours, logger: quietLogger)
            #expect(stillRunning.allSatisfy { $0.state == "running" }, "--dry-run terminated something")

            let teardown = try await Scripts.run(
                WorkerHarness.binary,
                ["fleet", "stop", "--setup", setupFile],
                environment: direct, directory: dir)
            #expect(teardown.succeeded, "\(teardown.stderr)")
            let terminated = Set(teardown.stdout.split(separator: "\n").map(String.init))
            #expect(terminated.isSuperset(of: ours))
            #expect(terminated.isSuperset(of: controllerIDs), "a controller is left running")
            #expect(terminated.isDisjoint(with: bystanders))
            let after = try await ec2.describeInstances(instanceIDs: ours + bystanders, logger: quietLogger)
            for instance in after {
                let expected =
                    bystanders.contains(instance.instanceID)
                    ? ["running", "pending"] : ["shutting-down", "terminated"]
                #expect(expected.contains(instance.state), "\(instance.instanceID) is \(instance.state)")
            }
            let groupsAfter = try await Scripts.awsCLI(
                [
                    "autoscaling", "describe-auto-scaling-groups",
                    "--auto-scaling-group-names", "parallelizer-\(name)",
                ], directory: dir)
            #expect(groupsAfter["AutoScalingGroups"]?.arrayValue?.isEmpty == true)
            _ = try await ec2.terminateInstances(bystanders, logger: quietLogger)
        }
    }

    @Test func renderedUserDataKeepsQuotesAndSetsTheStopTimeout() async throws {
        try await withTemporaryDirectory { dir in
            let environment = try Scripts.motoEnvironment(in: dir)
            let rendered = try await Scripts.run(
                "launch",
                [
                    "--queue-url", "https://sqs.eu-west-1.amazonaws.com/123456789012/q", "--instance-profile", "p",
                    "--release-s3", "s3://rel/parallelizer.tar.gz", "--release-sha256",
                    String(repeating: "ab", count: 32),
                    "--region", "eu-west-1", "--render-only", "--endpoint-url", try TestEnvironment.endpoint(.moto),
                    "--set", "inputBucket=in-bucket", "--set", "outputBucket=out-bucket", "--set",
                    #"analysisProgram=bin/x --say 'it''s' "two words""#,
                    "--set", "shutdownGrace=100", "--set", "numThreads=3",
                ], environment: environment, directory: dir)
            #expect(rendered.succeeded, "\(rendered.stderr)")
            #expect(rendered.stdout.hasPrefix("#cloud-config\n"))
            #expect(rendered.stdout.contains("TimeoutStopSec=130"))
            #expect(rendered.stdout.contains("KillMode=mixed"))
            let (config, warnings) = try WorkerConfig.resolve(
                [ConfigLayer(source: "user-data", values: try UserData.parse(rendered.stdout))], cores: 2)
            #expect(warnings.isEmpty)
            #expect(config.analysisProgram == ["bin/x", "--say", "its", "two words"])
            #expect(config.region == "eu-west-1" && config.numThreads == 3 && config.shutdownGrace == 100)
        }
    }

    /// The parameters are checked and rendered by the daemon's own code (`parallelizer config render`), so launch
    /// reads durations as the daemon does and refuses, before starting anything, what the daemon would refuse.
    @Test func launchChecksParametersWithTheDaemonsOwnRules() async throws {
        try await withTemporaryDirectory { dir in
            let environment = try Scripts.motoEnvironment(in: dir)
            let common = [
                "--queue-url", "https://sqs.eu-west-1.amazonaws.com/123456789012/q", "--instance-profile", "p",
                "--release-s3", "s3://rel/parallelizer.tar.gz", "--release-sha256", String(repeating: "ab", count: 32),
                "--region", "eu-west-1", "--render-only", "--endpoint-url", try TestEnvironment.endpoint(.moto),
                "--set", "inputBucket=in-bucket", "--set", "outputBucket=out-bucket", "--set", "analysisProgram=bin/x",
            ]
            let minutes = try await Scripts.run(
                "launch", common + ["--set", "shutdown-grace=2m"], environment: environment,
                directory: dir)
            #expect(minutes.succeeded, "\(minutes.stderr)")
            #expect(minutes.stdout.contains("TimeoutStopSec=150"))
            #expect(minutes.stdout.contains("  shutdownGrace: '2m'"), "the key is not in its canonical spelling")
            for (bad, says) in [
                ("taskTimeout=soon", "taskTimeout"), ("numThreds=4", "numThreds"),
                ("outputBucket=Not_A_Bucket", "outputBucket"),
            ] {
                let refused = try await Scripts.run(
                    "launch", common + ["--set", bad], environment: environment, directory: dir)
                #expect(refused.status == 2, "\(bad): \(refused.stderr)")
                #expect(refused.stderr.contains(says), "\(bad): \(refused.stderr)")
                #expect(!refused.stdout.contains("#cloud-config"), "\(bad) was rendered")
            }
        }
    }

    /// `fleet render` prints what `fleet launch` boots on, the controller's too, and refuses before anything
    /// starts what EC2 or the daemon would refuse: a bad market, no release, user-data over EC2's 16 KiB.
    @Test func fleetRenderShowsTheControllersBootAndRefusesWhatCannotLaunch() async throws {
        try await withTemporaryDirectory { dir in
            var environment = try Scripts.motoEnvironment(in: dir)
            environment["AWS_ENDPOINT_URL"] = try TestEnvironment.endpoint(.moto)
            let queueURL = "https://sqs.eu-west-1.amazonaws.com/123456789012/q"
            let common = [
                "fleet", "render", "--queue-url", queueURL, "--release-s3", "s3://rel/parallelizer.tar.gz",
                "--release-sha256", String(repeating: "ab", count: 32), "--region", "eu-west-1",
                "--set", "inputBucket=in-bucket", "--set", "outputBucket=out-bucket", "--set", "analysisProgram=bin/x",
                "--set", "ledgerTable=the-ledger",
            ]
            let rendered = try await Scripts.run(
                WorkerHarness.binary,
                common + ["--market", "asg-spot", "--instance-types", "t3.micro,t3a.micro", "--controller"],
                environment: environment, directory: dir)
            #expect(rendered.succeeded, "\(rendered.stderr)")
            let parts = rendered.stdout.components(separatedBy: "--- the controller's user-data\n")
            try #require(parts.count == 2, "\(rendered.stdout)")
            let (config, _) = try WorkerConfig.resolve(
                [ConfigLayer(source: "user-data", values: try UserData.parse(parts[0]))], cores: 2)
            #expect(config.autoScalingGroup == "parallelizer-q", "a group's workers are told their group")
            #expect(config.ledgerTable == "the-ledger")
            // The controller of a group keeps no size itself: it retires stuck workers and stops the group.
            #expect(
                parts[1].contains(
                    "ExecStart=/usr/local/bin/parallelizer controller --queue-url \(queueURL) --ledger-table the-ledger --market asg\n"
                ), "\(parts[1])")
            #expect(parts[1].contains("parallelizer-install") && parts[1].hasPrefix("#cloud-config\n"))
            #expect(try UserData.parse(parts[1]).isEmpty, "the controller's instance carries no worker parameters")

            for (extra, says) in [
                (["--market", "everywhere"], "--market"), (["--count", "0"], "--count"),
                (["--set", "analysisProgram=" + String(repeating: "x", count: 17000)], "EC2 allows 16384"),
                (["--release-s3", "s3://rel/other.tar.gz"], "--release-sha256"),
            ] {
                var arguments = common + extra
                if extra.first == "--release-s3" {
                    // The second --release-s3 wins; without its checksum the release cannot be checked at boot.
                    arguments =
                        common.filter { !$0.hasPrefix(String(repeating: "ab", count: 32)) }
                        .filter { $0 != "--release-sha256" } + extra
                }
                let refused = try await Scripts.run(
                    WorkerHarness.binary, arguments, environment: environment, directory: dir)
                #expect(refused.status == 2, "\(extra): \(refused.stderr)")
                #expect(refused.stderr.contains(says), "\(extra): \(refused.stderr)")
                #expect(!refused.stdout.contains("#cloud-config"), "\(extra) was rendered")
            }
        }
    }

    /// The boot script's stop timeout: the installed binary reads shutdownGrace from the instance's user-data.
    @Test func theBinaryReadsShutdownGraceFromTheInstancesUserData() async throws {
        try await withTemporaryDirectory { dir in
            // As fleet launch writes it: the map is the parameters file's content.
            let userData = """
                #cloud-config
                write_files:
                  - path: /etc/parallelizer/parameters.yaml
                    permissions: '0600'
                    content: |
                      parallelizer:
                        queueURL: 'https://sqs.eu-west-1.amazonaws.com/123456789012/q'
                        inputBucket: 'in-bucket'
                        outputBucket: 'out-bucket'
                        analysisProgram: 'bin/x'
                        shutdown-grace: '3m'
                runcmd:
                  - [sh, -c, 'true']
                """
            let imds = try await IMDSStandIn.start(directory: dir, userData: userData)
            defer { Task { await imds.stop() } }
            let result = try await Scripts.run(
                WorkerHarness.binary, ["config", "render", "--user-data", "--value", "shutdownGrace"],
                environment: ["AWS_EC2_METADATA_SERVICE_ENDPOINT": imds.endpoint, "PATH": "/usr/bin:/bin"],
                directory: dir)
            #expect(result.succeeded, "\(result.stderr)")
            #expect(result.stdout == "180\n")
        }
    }
}
