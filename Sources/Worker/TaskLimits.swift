import AWSCore
import FoundationEssentials
@preconcurrency import Glibc
import Logging
import Synchronization

/// Limits per task (`memoryMax`, `cpuMax`, `pidsMax`), enforced by the kernel through a cgroup of the task's own.
public struct ResourceLimits: Sendable, Equatable {
    public var memoryMax: Int64?
    /// Cores: 1.5 is one and a half CPUs' worth of time.
    public var cpuMax: Double?
    public var pidsMax: Int?

    public init(memoryMax: Int64? = nil, cpuMax: Double? = nil, pidsMax: Int? = nil) {
        self.memoryMax = memoryMax
        self.cpuMax = cpuMax
        self.pidsMax = pidsMax
    }

    public var isEmpty: Bool { memoryMax == nil && cpuMax == nil && pidsMax == nil }

    /// `512M`, `2G`, `1.5GiB`, `1073741824`: bytes, with binary units (K, M, G, T; `iB` or `B` after them).
    public static func bytes(_ text: String) -> Int64? {
        var t = text.trimmingSpaces.uppercased()
        if t.hasSuffix("IB") { t.removeLast(2) } else if t.hasSuffix("B") { t.removeLast() }
        let units: [Character: Double] = ["K": 1024, "M": 1_048_576, "G": 1_073_741_824, "T": 1_099_511_627_776]
        var factor = 1.0
        if let last = t.last, let unit = units[last] {
            factor = unit
            t.removeLast()
        }
        guard let value = Double(t), value > 0, value * factor < 9e18 else { return nil }
        return Int64((value * factor).rounded())
    }

    /// A size as people read it: `512 MiB`, `1.5 GiB`.
    public static func readable(_ bytes: Int64) -> String {
        let units = ["KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes)
        var unit = "bytes"
        for next in units where value >= 1024 {
            value /= 1024
            unit = next
        }
        let tenths = (value * 10).rounded() / 10
        return (tenths == tenths.rounded() ? "\(Int(tenths))" : "\(tenths)") + " " + unit
    }
}

/// What a task's command used: its peak memory and CPU time. From its cgroup (the whole tree of processes, page
/// cache included, as the kernel counts it against the limit) when it has one; else its CPU time from `wait4` (the
/// command and the children it waited for), and no peak: a command started as the daemon starts them (sharing the
/// daemon's memory until its exec) inherits the daemon's high-water mark in `ru_maxrss`.
public struct TaskUsage: Sendable, Equatable {
    public var peakMemoryBytes: Int64?
    public var cpuSeconds: Double?
    /// The kernel killed a process of the task for its memory limit.
    public var outOfMemory = false
    /// Which hierarchy measured it: `cgroup v2`, `cgroup v1` or `rusage`.
    public var source: String

    public init(peakMemoryBytes: Int64? = nil, cpuSeconds: Double? = nil, outOfMemory: Bool = false, source: String) {
        self.peakMemoryBytes = peakMemoryBytes
        self.cpuSeconds = cpuSeconds
        self.outOfMemory = outOfMemory
        self.source = source
    }
}

/// Where the runner leaves a command's `TaskUsage` for the task that ran it.
public final class UsageBox: Sendable {
    private let value = Mutex<TaskUsage?>(nil)
    private let killedHard = Mutex(false)
    public init() {}
    public var usage: TaskUsage? { value.withLock { $0 } }
    func set(_ usage: TaskUsage) { value.withLock { $0 = usage } }
    /// The cgroup's figures over what `wait4` gave, field by field: a kernel without `memory.peak`, or a cgroup
    /// without the memory controller, still leaves the CPU time.
    func merge(_ cgroup: TaskUsage) {
        value.withLock { current in
            var merged = cgroup
            if merged.cpuSeconds == nil { merged.cpuSeconds = current?.cpuSeconds }
            current = merged
        }
    }
    /// Whether the command had to be killed (SIGKILL) after its SIGTERM: what it was writing may be half written.
    public var killed: Bool { killedHard.withLock { $0 } }
    func markKilled() { killedHard.withLock { $0 = true } }
}

/// The machine's cgroups, as the daemon can use them for its tasks: found once at start-up.
///
/// - **v2** (a unified hierarchy at the root, as on Amazon Linux 2023 and Ubuntu 22.04+): the daemon's own cgroup
///   (from `/proc/self/cgroup`) is delegated to it (the unit has `Delegate=yes`); the daemon moves itself into a
///   `daemon` leaf, enables the controllers for the children, and each task gets `task-<name>` beside it, with
///   `memory.max` (and `memory.swap.max` 0), `cpu.max` and `pids.max`.
/// - **v1** (controllers on hierarchies of their own, as on this project's CI machines, a hybrid layout): each task
///   gets `pz-<name>` under the daemon's own cgroup in the `memory`, `cpu`, `cpuacct` and `pids` hierarchies, with
///   `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes`), `cpu.cfs_quota_us` and `pids.max`.
/// - Neither can be written (not root, no delegation, a read-only cgroupfs): tasks run without limits, said once.
public struct Cgroups: Sendable {
    public enum Layout: Sendable, Equatable {
        /// The folder under which task cgroups are made.
        case v2(String)
        /// By controller (`memory`, `cpu`, `cpuacct`, `pids`), the folder under which task cgroups are made.
        case v1([String: String])
    }

    public let layout: Layout
    public let limits: ResourceLimits

    public var hierarchy: String {
        if case .v2 = layout { return "cgroup v2" }
        return "cgroup v1"
    }

    /// Finds a usable hierarchy for `limits`, or says why there is none. `root` and `ownCgroup` (the text of
    /// `/proc/self/cgroup`) are parameters for the tests; `moveSelf` is false in them.
    public static func find(
        limits: ResourceLimits, root: String = "/sys/fs/cgroup", ownCgroup: String? = nil, moveSelf: Bool = true
    ) -> Result<Cgroups, CgroupError> {
        let selfCgroup = ownCgroup ?? LocalFile.readText("/proc/self/cgroup") ?? ""
        var paths: [String: String] = [:]  // controller (or "" for v2) -> path
        for line in selfCgroup.split(separator: "\n") {
            let fields = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard fields.count == 3 else { continue }
            if fields[0] == "0" && fields[1].isEmpty { paths[""] = String(fields[2]) }
            for controller in fields[1].split(separator: ",") { paths[String(controller)] = String(fields[2]) }
        }
        let wanted = controllers(for: limits)
        // v2 first: a unified hierarchy at the root, and the controllers the limits need given to the daemon's own
        // cgroup (what its parent delegates).
        if let path = paths[""], LocalFile.readText(root + "/cgroup.controllers") != nil {
            let own = root + (path == "/" ? "" : path)
            let available = LocalFile.readText(own + "/cgroup.controllers") ?? ""
            let have = Set(available.split(whereSeparator: \.isWhitespace).map(String.init))
            if wanted.allSatisfy(have.contains) || (wanted.isEmpty && !have.isEmpty) {
                return v2(own: own, wanted: wanted, moveSelf: moveSelf).map { Cgroups(layout: .v2($0), limits: limits) }
            }
            if !have.isEmpty {
                return .failure(
                    CgroupError(
                        "the unified cgroup hierarchy lacks the \(wanted.filter { !have.contains($0) }.joined(separator: ", ")) controller"
                    ))
            }
        }
        // v1: a hierarchy of its own for each controller.
        var folders: [String: String] = [:]
        var seen = Set<String>()
        for controller in wanted + ["cpuacct"] {
            guard let path = paths[controller], LocalFile.isDirectory(root + "/" + controller) else {
                if controller == "cpuacct" { continue }
                return .failure(CgroupError("no \(controller) controller, in cgroup v2 or v1"))
            }
            let folder = root + "/" + controller + (path == "/" ? "" : path)
            // Writable: a probe made and removed at once.
            let probe = folder + "/pz-probe-\(getpid())"
            guard mkdir(probe, 0o755) == 0 || errno == EEXIST else {
                return .failure(
                    CgroupError("cannot make a cgroup under \(folder): \(String(cString: strerror(errno)))"))
            }
            rmdir(probe)
            // `cpu` and `cpuacct` are often one hierarchy (`cpu,cpuacct`, linked under both names): one folder.
            guard seen.insert(LocalFile.realPath(folder) ?? folder).inserted else { continue }
            folders[controller] = folder
        }
        return .success(Cgroups(layout: .v1(folders), limits: limits))
    }

    static func controllers(for limits: ResourceLimits) -> [String] {
        (limits.memoryMax != nil ? ["memory"] : []) + (limits.cpuMax != nil ? ["cpu"] : [])
            + (limits.pidsMax != nil ? ["pids"] : [])
    }

    /// Delegation in v2: the daemon's own cgroup may have either processes or controlled children, so the daemon
    /// moves into a `daemon` leaf before the controllers are turned on for the children.
    static func v2(own: String, wanted: [String], moveSelf: Bool) -> Result<String, CgroupError> {
        let leaf = own + "/daemon"
        if moveSelf {
            guard mkdir(leaf, 0o755) == 0 || errno == EEXIST else {
                return .failure(
                    CgroupError(
                        "cannot make \(leaf): \(String(cString: strerror(errno))) (the unit needs Delegate=yes)"))
            }
            // The daemon alone: under its unit (Delegate=yes) it is all the cgroup holds. Run by hand in a session,
            // the others stay, and the controllers cannot be given to the children (below): no limits, said once.
            guard LocalFile.writeString(leaf + "/cgroup.procs", "0") else {
                return .failure(
                    CgroupError("cannot move the daemon into \(leaf): \(String(cString: strerror(errno)))"))
            }
        }
        let enable = wanted.map { "+" + $0 }.joined(separator: " ")
        guard enable.isEmpty || LocalFile.writeString(own + "/cgroup.subtree_control", enable) else {
            return .failure(
                CgroupError(
                    "cannot enable \(enable) for \(own)'s children: \(String(cString: strerror(errno))) (other processes share its cgroup: run the daemon under its unit, which has Delegate=yes)"
                ))
        }
        return .success(own)
    }

    /// Makes the cgroup(s) of one task, with the limits written.
    func make(task name: String) throws(CgroupError) -> TaskCgroup {
        var folders: [String: String] = [:]
        var made: [String] = []
        func fail(_ what: String) -> CgroupError {
            let error = CgroupError("\(what): \(String(cString: strerror(errno)))")
            made.reversed().forEach { rmdir($0) }
            return error
        }
        func write(_ file: String, _ value: String, optional: Bool = false) throws(CgroupError) {
            if !LocalFile.writeString(file, value) && !optional { throw fail("cannot write \(value) to \(file)") }
        }
        switch layout {
        case .v2(let parent):
            let folder = parent + "/task-" + name
            guard mkdir(folder, 0o755) == 0 else { throw fail("cannot make \(folder)") }
            made.append(folder)
            folders[""] = folder
            if let memory = limits.memoryMax {
                try write(folder + "/memory.max", String(memory))
                try write(folder + "/memory.swap.max", "0", optional: true)
            }
            if let cpu = limits.cpuMax { try write(folder + "/cpu.max", "\(Int((cpu * 100_000).rounded())) 100000") }
            if let pids = limits.pidsMax { try write(folder + "/pids.max", String(pids)) }
        case .v1(let parents):
            for (controller, parent) in parents.sorted(by: { $0.key < $1.key }) {
                let folder = parent + "/pz-" + name
                guard mkdir(folder, 0o755) == 0 else { throw fail("cannot make \(folder)") }
                made.append(folder)
                folders[controller] = folder
            }
            if let memory = limits.memoryMax, let folder = folders["memory"] {
                try write(folder + "/memory.limit_in_bytes", String(memory))
                // With swap accounting, the same for memory and swap together: the limit is not a swap file.
                try write(folder + "/memory.memsw.limit_in_bytes", String(memory), optional: true)
            }
            if let cpu = limits.cpuMax, let folder = folders["cpu"] {
                try write(folder + "/cpu.cfs_period_us", "100000")
                try write(folder + "/cpu.cfs_quota_us", String(Int((cpu * 100_000).rounded())))
            }
            if let pids = limits.pidsMax, let folder = folders["pids"] { try write(folder + "/pids.max", String(pids)) }
        }
        var descriptors: [Int32] = []
        for folder in folders.values.sorted() {
            let fd = open(folder + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else {
                descriptors.forEach { close($0) }
                throw fail("cannot open \(folder)/cgroup.procs")
            }
            descriptors.append(fd)
        }
        return TaskCgroup(folders: folders, procs: descriptors, hierarchy: hierarchy)
    }
}

public struct CgroupError: Error, Sendable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// One task's cgroup(s): the `cgroup.procs` descriptors the command's child writes itself into, then what it used.
public struct TaskCgroup: Sendable {
    /// By controller (`""` for v2).
    let folders: [String: String]
    public let procs: [Int32]
    let hierarchy: String

    /// What the task used, read once its command has ended.
    func usage() -> TaskUsage {
        var usage = TaskUsage(source: hierarchy)
        func number(_ path: String) -> Int64? { LocalFile.readText(path).flatMap { Int64($0.trimmingSpaces) } }
        func field(_ path: String, _ name: String) -> Int64? {
            for line in (LocalFile.readText(path) ?? "").split(separator: "\n") {
                let parts = line.split(separator: " ")
                if parts.count == 2 && parts[0] == name { return Int64(parts[1]) }
            }
            return nil
        }
        if let folder = folders[""] {
            usage.peakMemoryBytes = number(folder + "/memory.peak")
            usage.cpuSeconds = field(folder + "/cpu.stat", "usage_usec").map { Double($0) / 1e6 }
            usage.outOfMemory = (field(folder + "/memory.events", "oom_kill") ?? 0) > 0
        } else {
            if let memory = folders["memory"] {
                usage.peakMemoryBytes = number(memory + "/memory.max_usage_in_bytes")
                // `oom_kill` (Linux 4.13+); `under_oom` says nothing once the command has ended.
                usage.outOfMemory = (field(memory + "/memory.oom_control", "oom_kill") ?? 0) > 0
            }
            if let cpuacct = folders["cpuacct"] ?? folders["cpu"] {
                usage.cpuSeconds = number(cpuacct + "/cpuacct.usage").map { Double($0) / 1e9 }
            }
        }
        return usage
    }

    /// Kills every process left in the task's cgroup(s) (a command without a PID namespace may leave one behind):
    /// v2's `cgroup.kill`, else SIGKILL to each listed process. Returns whether any was left.
    @discardableResult
    func killAll() -> Bool {
        var any = false
        for folder in folders.values {
            let left = (LocalFile.readText(folder + "/cgroup.procs") ?? "").split(separator: "\n").compactMap {
                Int32($0)
            }
            guard !left.isEmpty else { continue }
            any = true
            if !LocalFile.writeString(folder + "/cgroup.kill", "1") { left.forEach { kill($0, SIGKILL) } }
        }
        return any
    }

    /// Closes the descriptors and removes the cgroup(s), killing what is left in them.
    func remove() {
        procs.forEach { close($0) }
        killAll()
        for folder in folders.values {
            for _ in 0..<50 {
                if rmdir(folder) == 0 || errno == ENOENT { break }
                usleep(20_000)
            }
        }
    }
}

extension LocalFile {
    /// Writes `text` to an existing file (a cgroup's), in one write; false when refused.
    static func writeString(_ path: String, _ text: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } == bytes.count
    }

    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }
}
