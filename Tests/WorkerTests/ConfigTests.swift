import TestSupport
import Testing
import Worker

@Suite struct ConfigTests {
    static let required = """
        queueURL=https://sqs.us-east-1.amazonaws.com/123456789012/work
        inputBucket=in-bucket
        outputBucket=out-bucket
        analysisProgram=./run.sh --fast "two words"
        """

    @Test func keyValueLinesWithCommentsAndSpaces() throws {
        let values = try UserData.parse("# a comment\n\n  queueURL = https://q/1/x  \ninputBucket=b\r\nempty=\n")
        #expect(values == ["queueURL": "https://q/1/x", "inputBucket": "b", "empty": ""])
    }

    @Test func jsonObject() throws {
        let values = try UserData.parse(
            #"{"queueURL": "https://q/1/x", "numThreads": 4, "shouldShutdown": false, "x": null}"#)
        #expect(values == ["queueURL": "https://q/1/x", "numThreads": "4", "shouldShutdown": "false"])
    }

    @Test func cloudConfigFlatMap() throws {
        let text = """
            #cloud-config
            packages: [curl]
            write_files:
              - path: /etc/x
                content: |
                  queueURL: not-this-one
            parallelizer:
              queueURL: "https://sqs.eu-west-1.amazonaws.com/1/q"   # the queue
              inputBucket: in
              analysisProgram: 'bin/run --flag'
              numThreads: 2
            runcmd:
              - [systemctl, start, parallelizer]
            """
        let values = try UserData.parse(text)
        #expect(
            values == [
                "queueURL": "https://sqs.eu-west-1.amazonaws.com/1/q", "inputBucket": "in",
                "analysisProgram": "bin/run --flag", "numThreads": "2",
            ])
    }

    /// fleet launch's form: the map is the content of the file cloud-init writes, which keeps cloud-init's schema
    /// check clean (a top-level key it does not know is a warning from cloud-init 24 on). It wins over a top-level
    /// map, and the other files' contents are not read.
    @Test func cloudConfigParametersInTheFileCloudInitWrites() throws {
        let text = """
            #cloud-config
            write_files:
              - path: /etc/other
                content: |
                  parallelizer:
                    queueURL: not-this-one
              - path: '/etc/parallelizer/parameters.yaml'
                permissions: '0600'
                content: |
                  parallelizer:
                    queueURL: 'https://sqs.eu-west-1.amazonaws.com/1/q'

                    analysisProgram: 'bin/run --flag ''x'''
              - content: |
                  #!/bin/sh
                path: /usr/local/sbin/x
            parallelizer:
              queueURL: not-this-one-either
            runcmd:
              - [sh, -c, 'true']
            """
        #expect(
            try UserData.parse(text) == [
                "queueURL": "https://sqs.eu-west-1.amazonaws.com/1/q", "analysisProgram": "bin/run --flag 'x'",
            ])
        // The controller's: the file with an empty map.
        let empty =
            "#cloud-config\nwrite_files:\n  - path: /etc/parallelizer/parameters.yaml\n    content: |\n"
            + "      parallelizer:\n\n  - path: /etc/x\n    content: |\n      y\n"
        #expect(try UserData.parse(empty) == [:])
    }

    /// What cloud-init would read as a line break ends the parameters file's block: refused when rendering, with
    /// "\r\n" (one Character in Swift), U+2028 and control characters; a tab is kept.
    @Test func renderingRefusesLineBreaksOfEveryKind() throws {
        let base: [(key: String, value: String)] = [
            ("queueURL", "https://sqs.eu-west-1.amazonaws.com/1/q"), ("inputBucket", "in-bucket"),
            ("outputBucket", "out-bucket"),
        ]
        for bad in ["a\r\nb", "a\u{2028}b", "a\u{85}b", "a\u{1B}[31mb", "a\nb"] {
            #expect(throws: ConfigError.self, "\(bad.unicodeScalars.map { $0.value })") {
                try UserDataRenderer.render(base + [("analysisProgram", bad)])
            }
        }
        let (text, _) = try UserDataRenderer.render(base + [("analysisProgram", "bin/x\t--flag")])
        #expect(text.contains("analysisProgram: 'bin/x\t--flag'"))
    }

    /// What a YAML tool may make of fleet launch's user-data, and forms written by hand: the parameters file is found
    /// as an item of the top-level write_files list only (a script that mentions the path is not it), with a comment
    /// on its path line or a wider dash; held in another form than a literal block, it is an error naming the file,
    /// never a reason to read a stale top-level map.
    @Test func theParametersFileIsFoundAsAWriteFilesItemOrRefused() throws {
        let wide = """
            #cloud-config
            write_files:
            -   content: |
                    #!/bin/sh
                    # - path: /etc/parallelizer/parameters.yaml
                path: /usr/local/sbin/x
            -   content: |
                    parallelizer:
                      queueURL: 'q1'
                path: /etc/parallelizer/parameters.yaml   # the daemon's
            """
        #expect(try UserData.parse(wide) == ["queueURL": "q1"])
        let rewritten = """
            #cloud-config
            write_files:
            - content: "parallelizer:\\n  queueURL: 'q1'\\n"
              path: /etc/parallelizer/parameters.yaml
            parallelizer:
              queueURL: stale
            """
        #expect(throws: UserData.ParseError.self) { try UserData.parse(rewritten) }
        do {
            _ = try UserData.parse(rewritten)
        } catch {
            #expect(error.message.contains("/etc/parallelizer/parameters.yaml"))
        }
        // An error inside the file's map names the file and the user-data's own line.
        let bad =
            "#cloud-config\nwrite_files:\n  - path: /etc/parallelizer/parameters.yaml\n    content: |\n"
            + "      parallelizer:\n        queueURL: 'q1\n"
        do {
            _ = try UserData.parse(bad)
            Issue.record("a quote left open was read")
        } catch {
            #expect(error.message.contains("parameters.yaml") && error.message.contains("line 6"), "\(error)")
        }
    }

    /// YAML's quoting, as fleet launch writes it: `''` inside single quotes, backslash escapes inside double.
    @Test func cloudConfigQuotedScalars() throws {
        let text = """
            #cloud-config
            parallelizer:
              analysisProgram: 'bin/x.sh --mode ''fast'' # not a comment'
              shutdownCommand: "/bin/sh -c \\"echo a\\tb\\""
              outputPrefix: ''
            """
        let values = try UserData.parse(text)
        #expect(
            values == [
                "analysisProgram": "bin/x.sh --mode 'fast' # not a comment",
                "shutdownCommand": "/bin/sh -c \"echo a\tb\"", "outputPrefix": "",
            ])
        for bad in ["'open", "'a' b", #""\q""#] {
            #expect(throws: UserData.ParseError.self) {
                try UserData.parse("#cloud-config\nparallelizer:\n  k: \(bad)\n")
            }
        }
    }

    @Test func mimeMultipart() throws {
        let text = """
            Content-Type: multipart/mixed; boundary="==BOUNDARY=="
            MIME-Version: 1.0

            --==BOUNDARY==
            Content-Type: text/x-shellscript; charset="us-ascii"

            #!/bin/bash
            echo hello
            --==BOUNDARY==
            Content-Type: text/plain; charset="us-ascii"

            queueURL=https://q/1/x
            inputBucket=in
            --==BOUNDARY==--
            """
        #expect(try UserData.parse(text) == ["queueURL": "https://q/1/x", "inputBucket": "in"])
    }

    @Test(arguments: [
        "{not json", "[1, 2]", #"{"a": {"nested": 1}}"#, "just some words", "#!/bin/bash\necho hi",
        "#cloud-config\npackages: [x]\n", "#cloud-config\nparallelizer:\n  a: 1\n    b: 2\n",
        "Content-Type: multipart/mixed; boundary=XX\n\n--XX\nContent-Type: text/plain\n\n{oops\n--XX--\n",
    ])
    func malformedUserDataIsRefused(_ text: String) {
        #expect(throws: UserData.ParseError.self) { try UserData.parse(text) }
    }

    func resolve(_ layers: [ConfigLayer]) throws -> (WorkerConfig, [String]) {
        try WorkerConfig.resolve(layers, cores: 8)
    }

    /// The limits per task, checkpoints and the failure budget: sizes with units, cores as a decimal, and a
    /// checkpoint grace that leaves room for the upload within shutdownGrace.
    @Test func limitsCheckpointsAndTheFailureBudget() throws {
        let base = try UserData.parse(Self.required)
        func config(_ extra: [String: String]) throws -> WorkerConfig {
            try resolve([ConfigLayer(source: "user-data", values: base.merging(extra) { $1 })]).0
        }
        let set = try config([
            "memoryMax": "1.5G", "cpuMax": "0.5", "pidsMax": "64", "checkpoint": "true", "checkpointGrace": "20s",
            "failureBudget": "0",
        ])
        #expect(set.limits == ResourceLimits(memoryMax: 1_610_612_736, cpuMax: 0.5, pidsMax: 64))
        #expect(set.checkpoint && set.checkpointGrace == 20 && set.failureBudget == 0)
        #expect(try config([:]).limits.isEmpty && !(try config([:]).checkpoint) && (try config([:]).failureBudget == 5))
        #expect(ResourceLimits.bytes("512MiB") == 536_870_912 && ResourceLimits.bytes("2048") == 2048)
        #expect(ResourceLimits.readable(1_610_612_736) == "1.5 GiB" && ResourceLimits.readable(64 << 20) == "64 MiB")
        for (key, value, says) in [
            ("memoryMax", "lots", "is not a size"), ("memoryMax", "100K", "at least 1 MiB"),
            ("cpuMax", "0", "cores from 0.01"), ("pidsMax", "0", "outside"),
            ("checkpointGrace", "90", "not less than shutdownGrace"),
        ] {
            var values = [key: value]
            if key == "checkpointGrace" { values["checkpoint"] = "true" }
            #expect {
                try config(values)
            } throws: { error in
                "\(error)".contains(key) && "\(error)".contains(says)
            }
        }
    }

    @Test func defaultsAndRequiredKeys() throws {
        let (config, warnings) = try resolve([
            ConfigLayer(source: "user-data", values: try UserData.parse(Self.required))
        ])
        #expect(config.analysisProgram == ["./run.sh", "--fast", "two words"])
        #expect(config.visibilityTimeout == 600)
        // One slot per core, as aws-parallelizer's default of 0.
        #expect(config.numThreads == 8)
        #expect(config.shouldShutdown)
        #expect(config.maxAttempts == 5)
        #expect(config.idleTimeout == 60)
        #expect(config.shutdownCommand == ["shutdown", "-h", "now"])
        #expect(config.workDir == "/var/lib/parallelizer")
        #expect(config.logFile == "/var/log/parallelizer.log")
        // Never unlimited: past the longest a heartbeat can keep a message hidden, another worker would start it.
        #expect(config.taskTimeout == VisibilityPlan.longestTask)
        #expect(config.deadEndPause == 600)
        #expect(warnings.isEmpty)
    }

    @Test func layersApplyInOrder() throws {
        let userData = ConfigLayer(
            source: "user-data",
            values: try UserData.parse(Self.required + "\nnumThreads=2\nmaxAttempts=3\nidleTimeout=10"))
        let file = ConfigLayer(source: "file", values: ["numThreads": "3", "maxAttempts": "4"])
        let env = ConfigLayer.environment([
            "PARALLELIZER_MAXATTEMPTS": "7", "PARALLELIZER_IDLE_TIMEOUT": "2m", "OTHER": "x",
        ])
        let flags = ConfigLayer(source: "--set", values: ["maxattempts": "9"])
        let (config, _) = try resolve([userData, file, env, flags])
        #expect(config.numThreads == 3)
        #expect(config.maxAttempts == 9)
        #expect(config.idleTimeout == 120)
    }

    @Test func aliasesZeroThreadsAndUnknownKeys() throws {
        let layer = ConfigLayer(
            source: "user-data",
            values: try UserData.parse(
                Self.required + "\nEC2SQSRegion=eu-west-2\nnumThreads=0\ncolour=blue\naccessKey=AKIA1\nsecretKey=s3cr3t"
            ))
        let (config, warnings) = try resolve([layer])
        #expect(config.region == "eu-west-2")
        #expect(config.numThreads == 8)
        #expect(warnings.contains { $0.contains("colour") })
        #expect(warnings.contains { $0.contains("instance role") })
        #expect(!warnings.joined().contains("s3cr3t"))
    }

    @Test(arguments: [
        ("", "queueURL"), ("queueURL=not a url", "queueURL"), ("visibilityTimeout=soon", "visibilityTimeout"),
        ("taskTimeout=ten minutes", "taskTimeout"), ("numThreads=-1", "numThreads"),
        // Longer than one receive can keep the message hidden.
        ("taskTimeout=12h", "taskTimeout"), ("taskTimeout=42541", "taskTimeout"),
        ("shouldShutdown=maybe", "shouldShutdown"),
        ("maxAttempts=0", "maxAttempts"), ("analysisProgram=\"unterminated", "analysisProgram"),
        ("outputBucket=Bad_Bucket", "outputBucket"), ("workDir=relative/dir", "workDir"),
        ("environmentZip=env.zip", "environmentBucket"), ("accessKey=AKIA", "secretKey"),
    ])
    func badValuesNameTheirKey(override: String, key: String) throws {
        var text = Self.required
        if override.isEmpty {
            text = text.split(separator: "\n").dropFirst().joined(separator: "\n")
        } else {
            text += "\n" + override
        }
        let layer = ConfigLayer(source: "user-data", values: try UserData.parse(text))
        #expect { try resolve([layer]) } throws: { ($0 as? ConfigError)?.key == key }
    }

    @Test func theLongestTaskOneReceiveCovers() throws {
        let text = Self.required + "\ntaskTimeout=42540"
        let (config, _) = try resolve([ConfigLayer(source: "user-data", values: try UserData.parse(text))])
        #expect(config.taskTimeout == 42540)
        let long = ConfigLayer(source: "user-data", values: try UserData.parse(Self.required + "\ntaskTimeout=13h"))
        #expect { try resolve([long]) } throws: { error in
            String(describing: error).contains("longer than one receive can keep a message hidden")
        }
    }

    @Test func shellWords() throws {
        #expect(try ShellWords.split(#"a 'b c' "d \"e\"" f\ g $HOME"#) == ["a", "b c", #"d "e""#, "f g", "$HOME"])
        #expect(try ShellWords.split("  ") == [])
        #expect(throws: ShellWords.SplitError.self) { try ShellWords.split("'open") }
    }

    /// Parameters that cannot be resolved still say how the run ends: an instance launched with a typo in its
    /// user-data powers itself off (after the pause), unless its user-data says otherwise.
    @Test func theEndOfARunWhoseParametersAreBad() throws {
        let defaults = WorkerConfig.endOfRunSettings([
            ConfigLayer(source: "user-data", values: ["queueURL": "nonsense"])
        ])
        #expect(defaults.shouldShutdown && defaults.shutdownCommand == ["shutdown", "-h", "now"])
        #expect(!defaults.shutdownCommandGiven && defaults.deadEndPause == 600)
        let given = WorkerConfig.endOfRunSettings([
            ConfigLayer(source: "user-data", values: ["should_shutdown": "no", "deadEndPause": "2m"]),
            ConfigLayer(
                source: "--set",
                values: ["shouldShutdown": "true", "shutdownCommand": "/bin/echo 'off now'", "numThreads": "x"]),
        ])
        #expect(
            given.shouldShutdown && given.shutdownCommand == ["/bin/echo", "off now"] && given.shutdownCommandGiven)
        #expect(given.deadEndPause == 120)
        let off = WorkerConfig.endOfRunSettings([ConfigLayer(source: "file", values: ["shouldShutdown": "false"])])
        #expect(!off.shouldShutdown)
    }
}
