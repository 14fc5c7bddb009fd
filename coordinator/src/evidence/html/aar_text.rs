//! Every word of the after-action section of `report.html` (`html/aar.rs`), in English
//! ([`EN`]) and Vietnamese ([`VI`]); [`for_lang`] picks the report's. Data only.

use super::text::Lang;

/// Every user-visible string of the after-action section.
#[derive(Debug, Clone, Copy)]
pub struct AarText {
    /// Section title.
    pub title: &'static str,
    /// The paragraph under the title.
    pub intro: &'static str,
    /// Shown when the window holds no exercise.
    pub no_exercise: &'static str,
    /// Exercise kinds.
    pub drill: &'static str,
    /// .
    pub switchover: &'static str,
    /// .
    pub failover: &'static str,
    /// Row and column headings.
    pub group: &'static str,
    /// .
    pub runbook: &'static str,
    /// .
    pub start: &'static str,
    /// .
    pub end: &'static str,
    /// .
    pub outcome: &'static str,
    /// .
    pub started_by: &'static str,
    /// Said of a drill the coordinators started on the schedule.
    pub on_schedule: &'static str,
    /// .
    pub scope: &'static str,
    /// .
    pub groups: &'static str,
    /// .
    pub resources: &'static str,
    /// .
    pub resources_none: &'static str,
    /// .
    pub sites: &'static str,
    /// Site roles.
    pub role_primary: &'static str,
    /// .
    pub role_replica: &'static str,
    /// .
    pub role_step: &'static str,
    /// .
    pub objectives: &'static str,
    /// .
    pub rto_target: &'static str,
    /// .
    pub rpo_target: &'static str,
    /// .
    pub no_target: &'static str,
    /// .
    pub measured_rto: &'static str,
    /// .
    pub data_loss: &'static str,
    /// .
    pub lost_changes: &'static str,
    /// .
    pub not_measured: &'static str,
    /// .
    pub met: &'static str,
    /// .
    pub missed: &'static str,
    /// .
    pub participants: &'static str,
    /// .
    pub identity: &'static str,
    /// .
    pub did: &'static str,
    /// .
    pub approvals: &'static str,
    /// .
    pub no_approvals: &'static str,
    /// .
    pub step: &'static str,
    /// .
    pub approver: &'static str,
    /// .
    pub decision: &'static str,
    /// .
    pub when: &'static str,
    /// .
    pub record: &'static str,
    /// .
    pub timeline: &'static str,
    /// .
    pub no_steps: &'static str,
    /// .
    pub offset: &'static str,
    /// .
    pub duration: &'static str,
    /// .
    pub status: &'static str,
    /// .
    pub integrity: &'static str,
    /// .
    pub no_integrity: &'static str,
    /// .
    pub check: &'static str,
    /// .
    pub result: &'static str,
    /// .
    pub detail: &'static str,
    /// .
    pub passed: &'static str,
    /// .
    pub failed: &'static str,
    /// .
    pub unknown: &'static str,
    /// .
    pub deviations: &'static str,
    /// .
    pub no_deviations: &'static str,
    /// .
    pub corrective_actions: &'static str,
    /// .
    pub no_actions: &'static str,
    /// .
    pub no_actions_in_window: &'static str,
    /// .
    pub action: &'static str,
    /// .
    pub owner: &'static str,
    /// .
    pub due: &'static str,
    /// .
    pub state: &'static str,
    /// Action states.
    pub state_open: &'static str,
    /// .
    pub state_overdue: &'static str,
    /// .
    pub state_closed: &'static str,
    /// .
    pub closed_by: &'static str,
    /// .
    pub run: &'static str,
    /// .
    pub sign_off: &'static str,
    /// .
    pub not_signed: &'static str,
    /// "signed by".
    pub signed_by: &'static str,
    /// "at".
    pub at: &'static str,
    /// .
    pub next_due: &'static str,
    /// .
    pub no_schedule: &'static str,
    /// .
    pub every: &'static str,
    /// .
    pub overdue: &'static str,
    /// .
    pub all_actions: &'static str,
    /// .
    pub as_of: &'static str,
    /// .
    pub records: &'static str,
    /// What a participant did (an `Act`), followed by the step or action it was about.
    pub act_started: &'static str,
    /// .
    pub act_on_schedule: &'static str,
    /// .
    pub act_approved: &'static str,
    /// .
    pub act_rejected: &'static str,
    /// .
    pub act_confirmed: &'static str,
    /// .
    pub act_verified: &'static str,
    /// .
    pub act_refused: &'static str,
    /// .
    pub act_added: &'static str,
    /// .
    pub act_closed: &'static str,
    /// .
    pub act_signed: &'static str,
    /// How the data-loss window was found (`Measured::data_loss_basis`).
    pub basis_drill: &'static str,
    /// .
    pub basis_switchover: &'static str,
    /// .
    pub basis_failover: &'static str,
    /// .
    pub basis_not_recorded: &'static str,
    /// Deviations, by kind; `{measured}`, `{target}`, `{step}`, `{actor}` and `{detail}` are
    /// replaced by the deviation's fields.
    pub dev_rto_missed: &'static str,
    /// .
    pub dev_rto_not_measured: &'static str,
    /// .
    pub dev_data_loss: &'static str,
    /// .
    pub dev_step_failed: &'static str,
    /// .
    pub dev_step_retried: &'static str,
    /// .
    pub dev_step_skipped: &'static str,
    /// .
    pub dev_approval_rejected: &'static str,
    /// .
    pub dev_refused: &'static str,
    /// .
    pub dev_outcome: &'static str,
    /// .
    pub dev_action_overdue: &'static str,
}

/// English.
pub const EN: AarText = AarText {
    title: "After-action reports",
    intro: "One report per exercise (drill, switchover, failover) of this window, derived from the audit records listed with it (after-action.json holds the same). The objectives are the business-impact targets of the group: the RTO and RPO the business accepts. Participants are the certificate identities that acted; sign-off is a review record signed by an auditor's certificate.",
    no_exercise: "No drill, switchover or failover in this window.",
    drill: "Drill",
    switchover: "Switchover",
    failover: "Failover",
    group: "Group",
    runbook: "Runbook",
    start: "Start",
    end: "End",
    outcome: "Outcome",
    started_by: "Started by",
    on_schedule: "the coordinators, on the group's drill schedule (drill_every)",
    scope: "Scope",
    groups: "Groups",
    resources: "Resources",
    resources_none: "none named by a verify record",
    sites: "Sites",
    role_primary: "primary",
    role_replica: "replica",
    role_step: "ran steps",
    objectives: "Objectives (business-impact targets)",
    rto_target: "RTO target",
    rpo_target: "RPO target",
    no_target: "no target given",
    measured_rto: "Measured RTO",
    data_loss: "Data-loss window",
    lost_changes: "changes not replicated",
    not_measured: "not measured",
    met: "met",
    missed: "missed",
    participants: "Participants",
    identity: "Identity (certificate)",
    did: "What they did",
    approvals: "Approvals",
    no_approvals: "No approval was given in this exercise.",
    step: "Step",
    approver: "Approver",
    decision: "Decision",
    when: "When",
    record: "Record",
    timeline: "Timeline",
    no_steps: "No step was recorded.",
    offset: "From start",
    duration: "Duration",
    status: "Status",
    integrity: "Integrity checks",
    no_integrity: "No verify, check or probe was recorded in this exercise.",
    check: "Check",
    result: "Result",
    detail: "Detail",
    passed: "passed",
    failed: "failed",
    unknown: "no verdict",
    deviations: "Deviations",
    no_deviations: "None: every target met, every step succeeded, nothing refused.",
    corrective_actions: "Corrective actions",
    no_actions: "No corrective action was recorded against this exercise.",
    no_actions_in_window: "No corrective action was recorded in this window.",
    action: "Action",
    owner: "Owner",
    due: "Due",
    state: "State",
    state_open: "open",
    state_overdue: "overdue",
    state_closed: "closed",
    closed_by: "Closed by",
    run: "Exercise",
    sign_off: "Sign-off",
    not_signed: "Not signed: no auditor has signed a review of this exercise.",
    signed_by: "Signed by",
    at: "at",
    next_due: "Next exercise due",
    no_schedule: "no drill schedule (drill_every) for this group in this export",
    every: "every",
    overdue: "OVERDUE",
    all_actions: "All corrective actions",
    as_of: "State as of",
    records: "Records",
    act_started: "started it",
    act_on_schedule: "started it on the schedule",
    act_approved: "approved step",
    act_rejected: "rejected step",
    act_confirmed: "confirmed done: step",
    act_verified: "verified",
    act_refused: "was refused",
    act_added: "added action",
    act_closed: "closed action",
    act_signed: "signed the review",
    basis_drill: "not applicable: a drill works on a copy at the replica site; the live group is not promoted",
    basis_switchover: "planned switchover: the promotion is refused unless the replica holds every change the primary reported",
    basis_failover: "the old primary's last reported RPO when the replica was promoted (acknowledged changes younger than this may be lost), and the changes known captured and not replicated",
    basis_not_recorded: "no data-loss window recorded",
    dev_rto_missed: "RTO {measured}, over the target of {target}",
    dev_rto_not_measured: "No RTO was measured.",
    dev_data_loss: "Data-loss window {measured}, over the RPO target of {target}",
    dev_step_failed: "Step {step} failed",
    dev_step_retried: "Step {step} failed and was retried",
    dev_step_skipped: "Step {step} was skipped",
    dev_approval_rejected: "{actor} rejected step {step}",
    dev_refused: "{actor} was refused: {detail}",
    dev_outcome: "The exercise ended: {detail}",
    dev_action_overdue: "Action {detail} is open past its due date",
};

/// The table of `lang`.
pub fn for_lang(lang: Lang) -> &'static AarText {
    match lang {
        Lang::En => &EN,
        Lang::Vi => &VI,
    }
}

/// Vietnamese.
pub const VI: AarText = AarText {
    title: "Báo cáo sau diễn tập và sự cố",
    intro: "Mỗi đợt diễn tập, chuyển đổi có kế hoạch (switchover) hay chuyển đổi dự phòng (failover) trong khoảng thời gian này có một báo cáo, được suy ra từ các bản ghi kiểm toán đi kèm (after-action.json chứa cùng nội dung). Mục tiêu là các chỉ tiêu tác động nghiệp vụ của nhóm: RTO và RPO mà nghiệp vụ chấp nhận. Người tham gia là các danh tính chứng thư đã thực hiện thao tác; phê duyệt là bản ghi rà soát do chứng thư của kiểm toán viên ký.",
    no_exercise: "Không có diễn tập, switchover hay failover nào trong khoảng thời gian này.",
    drill: "Diễn tập",
    switchover: "Switchover",
    failover: "Failover",
    group: "Nhóm",
    runbook: "Runbook",
    start: "Bắt đầu",
    end: "Kết thúc",
    outcome: "Kết quả",
    started_by: "Người khởi động",
    on_schedule: "các coordinator, theo lịch diễn tập của nhóm (drill_every)",
    scope: "Phạm vi",
    groups: "Nhóm",
    resources: "Tài nguyên",
    resources_none: "không có tài nguyên nào được nêu trong bản ghi kiểm tra",
    sites: "Trung tâm dữ liệu",
    role_primary: "chính",
    role_replica: "bản sao",
    role_step: "đã chạy các bước",
    objectives: "Mục tiêu (chỉ tiêu tác động nghiệp vụ)",
    rto_target: "Mục tiêu RTO",
    rpo_target: "Mục tiêu RPO",
    no_target: "không có mục tiêu",
    measured_rto: "RTO đo được",
    data_loss: "Khoảng mất dữ liệu",
    lost_changes: "thay đổi chưa được sao chép",
    not_measured: "không đo được",
    met: "đạt",
    missed: "không đạt",
    participants: "Người tham gia",
    identity: "Danh tính (chứng thư)",
    did: "Đã làm gì",
    approvals: "Phê duyệt",
    no_approvals: "Không có phê duyệt nào trong đợt này.",
    step: "Bước",
    approver: "Người phê duyệt",
    decision: "Quyết định",
    when: "Thời điểm",
    record: "Bản ghi",
    timeline: "Diễn biến",
    no_steps: "Không có bước nào được ghi lại.",
    offset: "Từ lúc bắt đầu",
    duration: "Thời lượng",
    status: "Trạng thái",
    integrity: "Kiểm tra toàn vẹn",
    no_integrity: "Không có lần kiểm tra, đối chiếu hay thăm dò nào được ghi lại trong đợt này.",
    check: "Kiểm tra",
    result: "Kết quả",
    detail: "Chi tiết",
    passed: "đạt",
    failed: "không đạt",
    unknown: "chưa có kết luận",
    deviations: "Sai lệch",
    no_deviations: "Không có: mọi mục tiêu đều đạt, mọi bước đều thành công, không có yêu cầu nào bị từ chối.",
    corrective_actions: "Hành động khắc phục",
    no_actions: "Không có hành động khắc phục nào được ghi cho đợt này.",
    no_actions_in_window: "Không có hành động khắc phục nào được ghi trong khoảng thời gian này.",
    action: "Hành động",
    owner: "Người phụ trách",
    due: "Hạn",
    state: "Trạng thái",
    state_open: "đang mở",
    state_overdue: "quá hạn",
    state_closed: "đã đóng",
    closed_by: "Người đóng",
    run: "Đợt",
    sign_off: "Phê duyệt kết quả",
    not_signed: "Chưa ký: chưa có kiểm toán viên nào ký rà soát đợt này.",
    signed_by: "Người ký",
    at: "lúc",
    next_due: "Đợt tiếp theo đến hạn",
    no_schedule: "nhóm này không có lịch diễn tập (drill_every) trong bản xuất này",
    every: "mỗi",
    overdue: "QUÁ HẠN",
    all_actions: "Tất cả hành động khắc phục",
    as_of: "Trạng thái tính đến",
    records: "Bản ghi",
    act_started: "đã khởi động",
    act_on_schedule: "đã khởi động theo lịch",
    act_approved: "đã phê duyệt bước",
    act_rejected: "đã từ chối bước",
    act_confirmed: "đã xác nhận hoàn tất: bước",
    act_verified: "đã kiểm tra",
    act_refused: "đã bị từ chối",
    act_added: "đã thêm hành động",
    act_closed: "đã đóng hành động",
    act_signed: "đã ký rà soát",
    basis_drill: "không áp dụng: diễn tập làm việc trên một bản sao tại trung tâm dự phòng; nhóm đang chạy không bị chuyển đổi",
    basis_switchover: "switchover có kế hoạch: việc nâng cấp bị từ chối trừ khi bản sao giữ mọi thay đổi mà bên chính đã báo",
    basis_failover: "RPO cuối cùng mà bên chính cũ báo khi bản sao được nâng cấp (các thay đổi đã xác nhận mới hơn khoảng này có thể bị mất), và các thay đổi đã biết là được ghi nhận nhưng chưa sao chép",
    basis_not_recorded: "không có khoảng mất dữ liệu nào được ghi lại",
    dev_rto_missed: "RTO {measured}, vượt mục tiêu {target}",
    dev_rto_not_measured: "Không đo được RTO.",
    dev_data_loss: "Khoảng mất dữ liệu {measured}, vượt mục tiêu RPO {target}",
    dev_step_failed: "Bước {step} thất bại",
    dev_step_retried: "Bước {step} thất bại và đã được chạy lại",
    dev_step_skipped: "Bước {step} đã bị bỏ qua",
    dev_approval_rejected: "{actor} đã từ chối bước {step}",
    dev_refused: "{actor} đã bị từ chối: {detail}",
    dev_outcome: "Đợt đã kết thúc: {detail}",
    dev_action_overdue: "Hành động {detail} vẫn mở sau hạn",
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The templates of both languages carry the same placeholders, and the Vietnamese table
    /// is not English left untranslated (names and terms of art aside).
    #[test]
    fn both_languages_fill_the_same_placeholders_and_vietnamese_is_translated() {
        fn holes(s: &str) -> Vec<&str> {
            let mut v: Vec<&str> = s
                .split('{')
                .skip(1)
                .filter_map(|p| p.split_once('}').map(|(h, _)| h))
                .collect();
            v.sort_unstable();
            v
        }
        let pairs = [
            (EN.dev_rto_missed, VI.dev_rto_missed),
            (EN.dev_data_loss, VI.dev_data_loss),
            (EN.dev_step_failed, VI.dev_step_failed),
            (EN.dev_step_retried, VI.dev_step_retried),
            (EN.dev_step_skipped, VI.dev_step_skipped),
            (EN.dev_approval_rejected, VI.dev_approval_rejected),
            (EN.dev_refused, VI.dev_refused),
            (EN.dev_outcome, VI.dev_outcome),
            (EN.dev_action_overdue, VI.dev_action_overdue),
        ];
        for (en, vi) in pairs {
            assert_eq!(holes(en), holes(vi), "{en} / {vi}");
        }
        for (en, vi) in [
            (EN.title, VI.title),
            (EN.intro, VI.intro),
            (EN.no_deviations, VI.no_deviations),
            (EN.not_signed, VI.not_signed),
            (EN.basis_failover, VI.basis_failover),
        ] {
            assert_ne!(en, vi);
            assert!(
                vi.chars().any(|c| "ảạấầậắằặếềệốồộớờợứừựđ".contains(c)),
                "{vi}"
            );
        }
        assert_eq!(for_lang(Lang::Vi).title, VI.title);
        assert_eq!(for_lang(Lang::En).title, EN.title);
    }
}
