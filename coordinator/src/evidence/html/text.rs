//! The report's words: one table with every piece of text of `report.html` in every language
//! the report speaks ([`Lang`]), keyed by [`T`], and the dates in each language's format.
//!
//! The table is written with [`texts!`]: each entry is `Key => ["English", "Tiếng Việt"]`, so a
//! missing translation does not compile. Entries with values are templates with named
//! `{placeholders}` filled by [`fill`]; a test checks every language uses the same
//! placeholders. Templates are trusted markup (they may hold `<code>`); the values put into
//! them are escaped by the caller.

use serde::{Deserialize, Serialize};

/// A language the report is written in (`--lang`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// English (the default): dates in ISO 8601, UTC.
    #[default]
    En,
    /// Vietnamese: dates as dd/mm/yyyy HH:MM:SS, UTC.
    Vi,
}

impl Lang {
    /// Every language, in table column order.
    pub const ALL: [Lang; 2] = [Lang::En, Lang::Vi];

    /// The BCP 47 code (`en`, `vi`), as in `<html lang=..>` and `--lang`.
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Vi => "vi",
        }
    }

    /// True for the default language (so the manifest can leave it out).
    pub fn is_default(&self) -> bool {
        *self == Lang::En
    }

    fn column(self) -> usize {
        match self {
            Lang::En => 0,
            Lang::Vi => 1,
        }
    }
}

impl std::fmt::Display for Lang {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

impl std::str::FromStr for Lang {
    type Err = String;

    /// Parses `en` or `vi` (case-insensitive).
    fn from_str(s: &str) -> Result<Lang, String> {
        Lang::ALL
            .into_iter()
            .find(|l| l.code().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("{s:?} is not a report language (en, vi)"))
    }
}

/// A date and time (unix ms) in `lang`'s format, UTC: `2023-11-14T22:13:21.000Z` in English,
/// `14/11/2023 22:13:21` in Vietnamese. Empty when out of range.
pub fn fmt_time(lang: Lang, ms: i64) -> String {
    let Some(t) = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms) else {
        return String::new();
    };
    match lang {
        Lang::En => t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        Lang::Vi => t.format("%d/%m/%Y %H:%M:%S").to_string(),
    }
}

/// Defines [`T`] and its table: `Key => ["en", "vi"],`.
macro_rules! texts {
    ($($key:ident => [$en:expr, $vi:expr],)*) => {
        /// A piece of report text; [`tr`] gives it in a language.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum T {
            $(
                #[doc = $en]
                $key,
            )*
        }

        impl T {
            /// Every key (for the table's own tests).
            pub const ALL: &'static [T] = &[$(T::$key,)*];

            /// The key in every language, in [`Lang::ALL`] order.
            const fn words(self) -> [&'static str; 2] {
                match self {
                    $(T::$key => [$en, $vi],)*
                }
            }
        }
    };
}

/// `key` in `lang`.
pub fn tr(lang: Lang, key: T) -> &'static str {
    key.words()[lang.column()]
}

/// `key` in `lang` with each `{name}` replaced by its value from `args` (values are inserted
/// as given: escape them first).
pub fn fill(lang: Lang, key: T, args: &[(&str, &str)]) -> String {
    let mut out = tr(lang, key).to_string();
    for (name, value) in args {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

texts! {
    // Page head.
    Title => ["Tandem DR evidence — cluster {cluster}", "Bằng chứng khôi phục thảm họa (DR) của Tandem — cụm {cluster}"],
    Generated => ["Generated", "Thời điểm lập"],
    Window => ["Window", "Khoảng thời gian"],
    StartOfChain => ["start of chain", "đầu chuỗi"],
    EndOfChain => ["end of chain", "cuối chuỗi"],
    AuditRecords => ["Audit records", "Bản ghi kiểm toán"],
    RecordsRange => ["{n} (index {first} to {last})", "{n} (chỉ số {first} đến {last})"],
    ChainHead => ["Chain head hash", "Mã băm đỉnh chuỗi"],
    HashBefore => ["Hash before first record", "Mã băm trước bản ghi đầu tiên"],
    Language => ["Language", "Ngôn ngữ"],
    LanguageName => ["English", "Tiếng Việt"],
    TimesAre => ["All times are UTC ({format}).", "Mọi thời điểm theo giờ UTC ({format})."],
    TimeFormat => ["ISO 8601", "ngày/tháng/năm giờ:phút:giây"],
    Contents => ["Contents", "Mục lục"],
    Unauthenticated => [
        "Warning: {n} record(s) of this window (#{first} to #{last}) were made while the cluster ran without TLS (<code>[tls] insecure = true</code>): their actor is <code>unauthenticated</code> and nobody vouches for who acted.",
        "Cảnh báo: {n} bản ghi của khoảng thời gian này (#{first} đến #{last}) được tạo khi cụm chạy không có TLS (<code>[tls] insecure = true</code>): tác nhân của chúng là <code>unauthenticated</code> và không ai bảo đảm được ai đã thực hiện."
    ],
    // Words used in many places.
    Yes => ["yes", "có"],
    No => ["no", "không"],
    NoLoud => ["NO", "KHÔNG"],
    Pass => ["PASS", "ĐẠT"],
    Fail => ["FAIL", "KHÔNG ĐẠT"],
    Match => ["match", "khớp"],
    Mismatch => ["MISMATCH", "KHÔNG KHỚP"],
    StepOk => ["ok", "thành công"],
    StepFailed => ["failed", "thất bại"],
    Group => ["group", "nhóm"],
    Record => ["record", "bản ghi"],
    Records => ["records", "bản ghi"],
    Time => ["time", "thời điểm"],
    By => ["by", "người thực hiện"],
    Start => ["start", "bắt đầu"],
    End => ["end", "kết thúc"],
    Outcome => ["outcome", "kết quả"],
    Approvals => ["approvals", "phê duyệt"],
    Anywhere => ["anywhere", "mọi nơi"],
    WindowStart => ["window start", "đầu khoảng thời gian"],
    // Run kinds and what a site held.
    KindFailover => ["failover", "chuyển đổi sự cố"],
    KindSwitchover => ["switchover", "chuyển đổi có kế hoạch"],
    KindDrill => ["drill", "diễn tập"],
    KindRunbook => ["runbook", "runbook"],
    KindOperator => ["operator", "lệnh vận hành"],
    HeldPrimary => ["primary", "bản chính"],
    HeldReplica => ["replica", "bản sao"],
    HeldDrillCopy => ["drill copy", "bản sao diễn tập"],
    HeldPitrCopy => ["point-in-time copy", "bản sao theo thời điểm"],
    // Summary.
    Summary => ["Summary", "Tóm tắt"],
    Failovers => ["failovers", "chuyển đổi sự cố"],
    Switchovers => ["switchovers", "chuyển đổi có kế hoạch"],
    Drills => ["drills", "diễn tập"],
    RunbookRuns => ["runbook runs", "lượt chạy runbook"],
    RtoTarget => ["RTO target", "mục tiêu RTO"],
    WorstRto => ["worst RTO", "RTO kém nhất"],
    RtoMet => ["RTO met", "đạt RTO"],
    RpoSamples => ["RPO samples", "số mẫu RPO"],
    MaxRpo => ["max RPO", "RPO lớn nhất"],
    OverTarget => ["over target", "vượt mục tiêu"],
    VerifyOkFailed => ["verify ok / failed", "kiểm tra khớp / lệch"],
    Refused => ["refused", "bị từ chối"],
    // Data location.
    DataResidency => ["Data residency", "Vị trí lưu trữ dữ liệu"],
    ResidencyIntro => [
        "Every site that held each group's data during the window (primary and replica of every epoch, drill copies, point-in-time copies), against the group's allowed jurisdictions.",
        "Mọi địa điểm đã lưu giữ dữ liệu của từng nhóm trong khoảng thời gian (bản chính và bản sao của mỗi epoch, bản sao diễn tập, bản sao theo thời điểm), đối chiếu với các khu vực pháp lý được phép của nhóm."
    ],
    AllowedJurisdictions => ["allowed jurisdictions", "khu vực pháp lý được phép"],
    Site => ["site", "địa điểm"],
    Jurisdiction => ["jurisdiction", "khu vực pháp lý"],
    HeldAs => ["held as", "lưu giữ dưới dạng"],
    SinceRecord => ["since record", "từ bản ghi"],
    InsideAllowed => ["inside allowed", "trong phạm vi được phép"],
    LocationHeld => ["held", "tuân thủ"],
    LocationViolated => ["VIOLATED", "VI PHẠM"],
    LocationNotDeclared => ["not declared", "chưa khai báo"],
    // Drill cadence.
    DrillCadence => ["Drill cadence", "Chu kỳ diễn tập"],
    CadenceIntro => [
        "Groups with a drill schedule (<code>drill_every</code>): a gap between two drills (or from the window's start to the first, or from the last to the window's end) holds when it is at most <code>drill_every</code> plus the grace (10%, at least 1 s).",
        "Các nhóm có lịch diễn tập (<code>drill_every</code>): một khoảng giữa hai lần diễn tập (hoặc từ đầu khoảng thời gian đến lần đầu, hoặc từ lần cuối đến hết khoảng thời gian) là giữ đúng khi không dài hơn <code>drill_every</code> cộng thời gian ân hạn (10%, ít nhất 1 giây)."
    ],
    Every => ["every", "chu kỳ"],
    Grace => ["grace", "ân hạn"],
    Scheduled => ["scheduled", "theo lịch"],
    CadenceHeld => ["cadence held", "giữ đúng chu kỳ"],
    GapsMissed => ["gaps that missed", "các khoảng bị lỡ"],
    Drill => ["drill", "lần diễn tập"],
    Started => ["started", "bắt đầu"],
    // A group's section.
    GroupTitle => ["Group {group}", "Nhóm {group}"],
    Operations => ["Operations", "Các thao tác"],
    NoOperations => ["No operations in this window.", "Không có thao tác nào trong khoảng thời gian này."],
    Run => ["run", "lượt chạy"],
    Kind => ["kind", "loại"],
    Operation => ["operation", "thao tác"],
    RtoAchieved => ["RTO achieved", "RTO đạt được"],
    Rto => ["RTO", "RTO"],
    DataLossWindow => ["data-loss window", "khoảng mất dữ liệu"],
    RpoAtLoss => ["RPO at loss {ms} ms", "RPO khi mất {ms} ms"],
    LossRecorded => ["recorded", "đã ghi nhận"],
    LostChanges => [", {n} changes", ", {n} thay đổi"],
    StepTimeline => ["Step timeline: {kind} {run} ({start})", "Dòng thời gian các bước: {kind} {run} ({start})"],
    Step => ["step", "bước"],
    StartsAt => ["starts at", "bắt đầu lúc"],
    Duration => ["duration", "thời lượng"],
    Status => ["status", "trạng thái"],
    RpoOverTime => ["RPO over time", "RPO theo thời gian"],
    NoRpoSamples => ["No RPO samples in this window.", "Không có mẫu RPO nào trong khoảng thời gian này."],
    ChartLabel => ["RPO over time for {group}", "RPO theo thời gian của nhóm {group}"],
    ChartRpo => ["RPO", "RPO"],
    ChartTarget => ["target", "mục tiêu"],
    ChartOver => ["over target", "vượt mục tiêu"],
    ChartLegend => [
        "{n} samples in {rows} rows of rpo.csv (a row is one sample or a summary of the samples since the previous row); solid line: RPO, the worst of each row; dashed line: target; hollow circles: rows with samples over target ({over} samples over target).",
        "{n} mẫu trong {rows} dòng của rpo.csv (mỗi dòng là một mẫu hoặc bản tóm tắt các mẫu kể từ dòng trước); đường liền: RPO, giá trị xấu nhất của mỗi dòng; đường nét đứt: mục tiêu; vòng tròn rỗng: dòng có mẫu vượt mục tiêu ({over} mẫu vượt mục tiêu)."
    ],
    TimelineLegend => [
        "Bars: solid: step succeeded; hatched: step failed; outlined: result not recorded.",
        "Thanh: tô đặc: bước thành công; gạch chéo: bước thất bại; chỉ có viền: chưa ghi nhận kết quả."
    ],
    VerifyResults => ["Verify results", "Kết quả kiểm tra (verify)"],
    NoVerifyResults => ["No verify results in this window.", "Không có kết quả kiểm tra nào trong khoảng thời gian này."],
    Result => ["result", "kết quả"],
    Detail => ["detail", "chi tiết"],
    ApprovalsTitle => ["Approvals", "Phê duyệt"],
    NoApprovals => ["No approvals in this window.", "Không có phê duyệt nào trong khoảng thời gian này."],
    Approver => ["approver", "người phê duyệt"],
    SubmittedBy => ["submitted by", "người gửi"],
    Decision => ["decision", "quyết định"],
    Comment => ["comment", "ghi chú"],
    RefusedTitle => ["Refused commands", "Lệnh bị từ chối"],
    NoRefused => ["No refused commands in this window.", "Không có lệnh nào bị từ chối trong khoảng thời gian này."],
    Command => ["command", "lệnh"],
    Why => ["why", "lý do"],
    NotTiedToGroup => ["Not tied to a group", "Không gắn với nhóm nào"],
    // How to verify.
    HowToVerify => ["How to verify this evidence", "Cách kiểm tra bằng chứng này"],
    Verify1 => [
        "Run <code>tandem evidence verify DIR --ca ca.pem</code>: it re-checks the chain and every file, names the first record or file that does not match, and checks offline that a coordinator of the cluster CA signed the chain's head.",
        "Chạy <code>tandem evidence verify DIR --ca ca.pem</code>: lệnh kiểm tra lại chuỗi và từng tệp, chỉ ra bản ghi hoặc tệp đầu tiên không khớp, và kiểm tra ngoại tuyến rằng một coordinator thuộc CA của cụm đã ký đỉnh chuỗi."
    ],
    Verify2 => [
        "By hand: compute the BLAKE3 hash of each file (<code>b3sum audit.jsonl runs.json rpo.csv after-action.json report.html</code>) and compare with <code>manifest.json</code>.",
        "Kiểm tra thủ công: tính mã băm BLAKE3 của từng tệp (<code>b3sum audit.jsonl runs.json rpo.csv after-action.json report.html</code>) và so với <code>manifest.json</code>."
    ],
    Verify3 => [
        "Each line of <code>audit.jsonl</code> is one record. Its <code>hash</code> must equal BLAKE3(the 32 bytes of <code>prev_hash</code> ‖ the compact JSON of the record without <code>hash</code>, fields in the order index, at_ms, actor, kind, group, detail, prev_hash, object keys inside detail sorted). Each <code>prev_hash</code> must equal the previous line's <code>hash</code>; the first equals the manifest's <code>first_prev_hash</code> (all zeros when the window starts at record 0).",
        "Mỗi dòng của <code>audit.jsonl</code> là một bản ghi. Trường <code>hash</code> của nó phải bằng BLAKE3(32 byte của <code>prev_hash</code> ‖ JSON rút gọn của bản ghi không có <code>hash</code>, các trường theo thứ tự index, at_ms, actor, kind, group, detail, prev_hash, các khóa trong detail được sắp xếp). Mỗi <code>prev_hash</code> phải bằng <code>hash</code> của dòng trước; dòng đầu tiên bằng <code>first_prev_hash</code> trong manifest (toàn số 0 khi khoảng thời gian bắt đầu từ bản ghi 0)."
    ],
    Verify4 => [
        "The last record's hash must equal the chain head above; <code>signed-head.json</code> carries the leader's signature over it and the certificates to check it up to the cluster CA, so nothing was cut off or rebuilt.",
        "Mã băm của bản ghi cuối phải bằng mã băm đỉnh chuỗi ở trên; <code>signed-head.json</code> chứa chữ ký của coordinator leader trên mã băm đó cùng các chứng chỉ để kiểm tra đến CA của cụm, chứng tỏ chuỗi không bị cắt bớt hay dựng lại."
    ],
    // Controls mapping.
    ControlsTitle => ["Controls mapping", "Đối chiếu với các yêu cầu kiểm soát"],
    ControlsIntro => [
        "For each control an audit tests, the evidence in this folder that addresses it (links lead to the records), what the evidence shows went wrong (findings), and what is missing. Record numbers (#n) are the <code>index</code> of the lines of <code>audit.jsonl</code>.",
        "Với mỗi yêu cầu kiểm soát mà cuộc kiểm toán đánh giá: bằng chứng trong thư mục này đáp ứng yêu cầu đó (liên kết dẫn tới các bản ghi), những điểm bằng chứng cho thấy chưa đạt (phát hiện), và những gì còn thiếu. Số bản ghi (#n) là trường <code>index</code> của các dòng trong <code>audit.jsonl</code>."
    ],
    Control => ["control", "yêu cầu kiểm soát"],
    WhatIsTested => ["what is tested", "nội dung được đánh giá"],
    EvidenceHere => ["evidence in this folder", "bằng chứng trong thư mục này"],
    Findings => ["findings", "phát hiện"],
    Missing => ["missing", "còn thiếu"],
    NoneWord => ["none", "không có"],
    StatusCovered => ["covered", "đủ bằng chứng"],
    StatusGaps => ["gaps", "còn thiếu sót"],
    StatusFindings => ["FINDINGS", "CÓ PHÁT HIỆN"],
    StatusNoEvidence => ["NO EVIDENCE", "KHÔNG CÓ BẰNG CHỨNG"],
    CtlIso22301 => ["ISO 22301 §8.5", "ISO 22301 §8.5"],
    CtlIso22301What => [
        "Exercises at planned intervals, post-exercise reports, improvement actions.",
        "Diễn tập theo các khoảng thời gian đã hoạch định, báo cáo sau diễn tập, hành động cải tiến."
    ],
    CtlA530 => ["ISO/IEC 27001:2022 A.5.30", "ISO/IEC 27001:2022 A.5.30"],
    CtlA530What => [
        "ICT readiness for business continuity: RTO and RPO targets derived from the business impact analysis, and tested.",
        "Sẵn sàng CNTT cho tính liên tục kinh doanh: mục tiêu RTO và RPO lấy từ phân tích tác động kinh doanh, và đã được kiểm thử."
    ],
    CtlA814 => ["ISO/IEC 27001:2022 A.8.14", "ISO/IEC 27001:2022 A.8.14"],
    CtlA814What => [
        "Redundancy: a second site holds a current, verified copy of each group's data.",
        "Dự phòng: một địa điểm thứ hai giữ bản sao cập nhật, đã được kiểm tra, của dữ liệu mỗi nhóm."
    ],
    CtlSoc2 => ["SOC 2 A1.3", "SOC 2 A1.3"],
    CtlSoc2What => [
        "Recovery plan tested; actual recovery time and data loss recorded; gaps fixed.",
        "Kế hoạch khôi phục được kiểm thử; thời gian khôi phục và lượng dữ liệu mất thực tế được ghi nhận; các thiếu sót được khắc phục."
    ],
    CtlNist => ["NIST SP 800-34 / 800-84", "NIST SP 800-34 / 800-84"],
    CtlNistWhat => [
        "Test plan and after-action report: scope, objectives, participants, timeline, observations, corrective actions.",
        "Kế hoạch kiểm thử và báo cáo sau sự kiện: phạm vi, mục tiêu, người tham gia, dòng thời gian, quan sát, hành động khắc phục."
    ],
    CtlDecree53 => ["Decree 53/2022/NĐ-CP (Vietnam)", "Nghị định 53/2022/NĐ-CP"],
    CtlDecree53What => [
        "Data location: every site that held a group's data is inside the group's allowed jurisdictions.",
        "Vị trí dữ liệu: mọi địa điểm đã lưu giữ dữ liệu của nhóm đều nằm trong các khu vực pháp lý được phép của nhóm."
    ],
    // Controls mapping: evidence.
    EvDrill => ["drill {run} of {group}, {when}: {outcome}", "lần diễn tập {run} của nhóm {group}, {when}: {outcome}"],
    EvCadenceHeld => ["group {group}: a drill every {every}, cadence held ({n} drills)", "nhóm {group}: diễn tập mỗi {every}, giữ đúng chu kỳ ({n} lần)"],
    EvRtoTarget => ["group {group}: RTO target {ms} ms", "nhóm {group}: mục tiêu RTO {ms} ms"],
    EvRpoTarget => ["group {group}: RPO target {ms} ms", "nhóm {group}: mục tiêu RPO {ms} ms"],
    EvRtoMeasured => ["{kind} {run} of {group}: RTO {ms} ms, target {target} ms", "{kind} {run} của nhóm {group}: RTO {ms} ms, mục tiêu {target} ms"],
    EvRtoUnjudged => ["{kind} {run} of {group}: RTO {ms} ms, no target to judge it", "{kind} {run} của nhóm {group}: RTO {ms} ms, không có mục tiêu để đánh giá"],
    EvRpoSamples => ["group {group}: {n} RPO samples, max {max} ms", "nhóm {group}: {n} mẫu RPO, lớn nhất {max} ms"],
    EvVerifyOk => ["group {group}: {n} verify result(s) matched", "nhóm {group}: {n} kết quả kiểm tra khớp"],
    EvSecondSite => ["group {group}: data held at {sites}", "nhóm {group}: dữ liệu được lưu giữ tại {sites}"],
    EvDataLoss => ["{kind} {run} of {group}: data-loss window recorded ({loss})", "{kind} {run} của nhóm {group}: đã ghi nhận khoảng mất dữ liệu ({loss})"],
    EvTimeline => ["{kind} {run} of {group}: {n} step(s) on its timeline, run by {actor}", "{kind} {run} của nhóm {group}: {n} bước trên dòng thời gian, do {actor} thực hiện"],
    EvApproval => ["{run}: approved by {approver} ({decision})", "{run}: được {approver} phê duyệt ({decision})"],
    EvLocation => ["group {group} at {site} ({jurisdiction}), allowed {allowed}: {verdict}", "nhóm {group} tại {site} ({jurisdiction}), được phép {allowed}: {verdict}"],
    EvAfterAction => ["{n} after-action report(s)", "{n} báo cáo sau sự kiện"],
    EvActions => ["corrective actions: {open} open, {closed} closed", "hành động khắc phục: {open} đang mở, {closed} đã đóng"],
    EvSignedReview => ["{n} signed after-action review(s)", "{n} biên bản rà soát sau sự kiện đã ký"],
    // Controls mapping: findings.
    FindCadenceMissed => ["group {group}: a drill every {every}, cadence missed ({n} gap(s))", "nhóm {group}: diễn tập mỗi {every}, lỡ chu kỳ ({n} khoảng)"],
    FindRtoMissed => ["{kind} {run} of {group}: RTO {ms} ms over the target {target} ms", "{kind} {run} của nhóm {group}: RTO {ms} ms vượt mục tiêu {target} ms"],
    FindRpoOver => ["group {group}: {over} of {n} RPO samples over target (max {max} ms)", "nhóm {group}: {over} trên {n} mẫu RPO vượt mục tiêu (lớn nhất {max} ms)"],
    FindVerifyFailed => ["group {group}: {n} verify result(s) did NOT match", "nhóm {group}: {n} kết quả kiểm tra KHÔNG khớp"],
    FindRunFailed => ["{kind} {run} of {group} ended {outcome}", "{kind} {run} của nhóm {group} kết thúc với kết quả {outcome}"],
    FindLocation => ["group {group} at {site} ({jurisdiction}): outside {allowed}", "nhóm {group} tại {site} ({jurisdiction}): nằm ngoài {allowed}"],
    FindOpenActionsOverdue => ["{n} corrective action(s) overdue", "{n} hành động khắc phục quá hạn"],
    // Controls mapping: missing.
    MissNoDrill => ["group {group}: no drill in the window", "nhóm {group}: không có lần diễn tập nào trong khoảng thời gian"],
    MissNoSchedule => ["group {group}: no drill schedule (<code>drill_every</code>)", "nhóm {group}: chưa có lịch diễn tập (<code>drill_every</code>)"],
    MissNoRtoTarget => ["group {group}: no RTO target", "nhóm {group}: chưa có mục tiêu RTO"],
    MissNoRpoTarget => ["group {group}: no RPO target", "nhóm {group}: chưa có mục tiêu RPO"],
    MissNoRtoMeasured => ["group {group}: no drill, switchover or failover measured its RTO in the window", "nhóm {group}: không có lần diễn tập, chuyển đổi có kế hoạch hay chuyển đổi sự cố nào đo RTO trong khoảng thời gian"],
    MissNoRpoSamples => ["group {group}: no RPO samples in the window", "nhóm {group}: không có mẫu RPO nào trong khoảng thời gian"],
    MissNoVerify => ["group {group}: no verify result in the window", "nhóm {group}: không có kết quả kiểm tra nào trong khoảng thời gian"],
    MissNoSecondSite => ["group {group}: no second site held its data", "nhóm {group}: không có địa điểm thứ hai lưu giữ dữ liệu"],
    MissNoRecoveryTest => ["no drill, switchover or failover in the window", "không có lần diễn tập, chuyển đổi có kế hoạch hay chuyển đổi sự cố nào trong khoảng thời gian"],
    MissNoApproval => ["no approval recorded for any exercise", "không có phê duyệt nào được ghi nhận cho các lần diễn tập"],
    MissNoAfterAction => ["no after-action report in this folder", "không có báo cáo sau sự kiện trong thư mục này"],
    MissNoActions => ["no corrective action recorded", "không có hành động khắc phục nào được ghi nhận"],
    MissNoSignedReview => ["no after-action review signed", "không có biên bản rà soát sau sự kiện nào được ký"],
    MissNoRule => ["group {group}: no allowed jurisdictions declared", "nhóm {group}: chưa khai báo khu vực pháp lý được phép"],
    MissSiteJurisdiction => ["site {site}: no jurisdiction declared", "địa điểm {site}: chưa khai báo khu vực pháp lý"],
    MissNoResidency => ["no group's data location in the window", "không có thông tin vị trí dữ liệu của nhóm nào trong khoảng thời gian"],
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::collections::BTreeSet;

    fn placeholders(s: &str) -> BTreeSet<String> {
        s.split('{')
            .skip(1)
            .filter_map(|p| p.split_once('}').map(|(name, _)| name.to_string()))
            .collect()
    }

    #[test]
    fn every_language_has_every_text_with_the_same_placeholders() {
        for key in T::ALL {
            let en = tr(Lang::En, *key);
            for lang in Lang::ALL {
                let text = tr(lang, *key);
                assert!(!text.trim().is_empty(), "{key:?} is empty in {lang}");
                assert_eq!(
                    placeholders(text),
                    placeholders(en),
                    "{key:?}: {lang} uses other placeholders than en"
                );
                assert_eq!(
                    text.matches("<code>").count(),
                    text.matches("</code>").count(),
                    "{key:?} in {lang}: unbalanced <code>"
                );
            }
        }
    }

    #[test]
    fn vietnamese_text_is_vietnamese() {
        // Sentences (not names of standards or units) differ from English and carry
        // Vietnamese letters, so a copy-pasted English entry is caught.
        let vietnamese = "ăâđêôơưàảãáạằẳẵắặầẩẫấậèẻẽéẹềểễếệìỉĩíịòỏõóọồổỗốộờởỡớợùủũúụừửữứựỳỷỹýỵ";
        // The names of standards read the same in both.
        let names = [
            T::CtlIso22301,
            T::CtlA530,
            T::CtlA814,
            T::CtlSoc2,
            T::CtlNist,
        ];
        for key in T::ALL.iter().filter(|k| !names.contains(k)) {
            let (en, vi) = (tr(Lang::En, *key), tr(Lang::Vi, *key));
            if en.split_whitespace().count() >= 3 {
                assert_ne!(en, vi, "{key:?} is not translated");
                assert!(
                    vi.to_lowercase().chars().any(|c| vietnamese.contains(c)),
                    "{key:?}: {vi:?} has no Vietnamese letter"
                );
            }
        }
    }

    #[test]
    fn dates_follow_the_language() {
        let ms = 1_700_000_001_000;
        assert_eq!(fmt_time(Lang::En, ms), "2023-11-14T22:13:21.000Z");
        assert_eq!(fmt_time(Lang::Vi, ms), "14/11/2023 22:13:21");
    }

    #[test]
    fn languages_parse_from_their_codes() {
        assert_eq!("vi".parse::<Lang>(), Ok(Lang::Vi));
        assert_eq!("EN".parse::<Lang>(), Ok(Lang::En));
        assert!("fr".parse::<Lang>().is_err());
        assert_eq!(serde_json::to_string(&Lang::Vi).unwrap(), "\"vi\"");
    }

    #[test]
    fn fill_replaces_every_placeholder() {
        let s = fill(
            Lang::Vi,
            T::RecordsRange,
            &[("n", "3"), ("first", "0"), ("last", "2")],
        );
        assert_eq!(s, "3 (chỉ số 0 đến 2)");
    }
}
