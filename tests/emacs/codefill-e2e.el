;;; codefill-e2e.el --- drive eglot against codefill-lsp in `emacs --batch'  -*- lexical-binding: t -*-

;; Used by tests/test_emacs_e2e.py:  CODEFILL_E2E=params.json emacs --batch -l tests/emacs/codefill-e2e.el
;;
;; params.json names the editors/README.md snippet (saved to a file as it is there), the settings form shown there,
;; the files to open, the positions and the file to write the results to.  This driver does what a user does (M-x
;; eglot, C-M-i, M-x eglot-code-actions, ...), answers eglot's questions the way a user would, and records what
;; happened as JSON; the pytest side makes the assertions.  Every wait has a deadline, and a watchdog timer ends
;; Emacs whatever happens, so that the test cannot hang.

(require 'json)
(require 'cl-lib)
(require 'subr-x)

(defvar cf-params (let ((json-object-type 'plist) (json-array-type 'list))
                    (json-read-file (getenv "CODEFILL_E2E"))))
(defvar cf-results nil "A plist, written to the params' :out as JSON.")
(defvar cf-log nil "window/logMessage texts from the servers, newest first.")
(defvar cf-shown nil "window/showMessage texts from the servers, newest first.")
(defvar cf-prompts nil "Questions eglot asked (y-or-n-p, completing-read), newest first.")
(defvar cf-offered nil "The last completion-at-point: the candidates, sorted as eglot sorts them.")
(defvar cf-items nil "... and their LSP CompletionItems.")
(defvar cf-started (float-time))

(defun cf-put (key value) (setq cf-results (plist-put cf-results key value)))
(defun cf-bool (value) (if value t :json-false))

(defun cf-finish (code)
  "Write the results and leave Emacs with CODE."
  (cf-put :log (vconcat (reverse cf-log)))
  (cf-put :shown (vconcat (reverse cf-shown)))
  (cf-put :prompts (vconcat (reverse cf-prompts)))
  (cf-put :seconds (- (float-time) cf-started))
  (with-temp-file (plist-get cf-params :out)
    (insert (json-encode cf-results)))
  (kill-emacs code))

;; The watchdog: timers run while eglot waits for a server (accept-process-output), so this fires even when a step
;; hangs there; a hang anywhere else is for the pytest side's subprocess timeout.
(run-at-time (plist-get cf-params :deadline) nil
             (lambda () (cf-put :error "the driver's deadline passed") (cf-finish 3)))

(defun cf-wait (what pred timeout)
  "Wait up to TIMEOUT seconds, handling process output and timers, until PRED returns non-nil; return that."
  (let ((deadline (+ (float-time) timeout)) value)
    (while (and (not (setq value (funcall pred))) (< (float-time) deadline))
      (accept-process-output nil 0.05))
    (or value (error "Timed out after %s s waiting for %s" timeout what))))

(defun cf-pos (at)
  "The buffer position of AT, a 0-based (LINE COL) in characters."
  (save-excursion (goto-char (point-min)) (forward-line (nth 0 at)) (forward-char (nth 1 at)) (point)))

(defun cf-text () (buffer-substring-no-properties (point-min) (point-max)))

(defun cf-pick-first (beg end table pred)
  "A `completion-in-region-function' that takes the first candidate, as a user choosing it in a completion menu."
  (let* ((probe (buffer-substring-no-properties beg end))
         (all (all-completions probe table pred))
         (sort (completion-metadata-get (completion-metadata probe table pred) 'display-sort-function))
         (sorted (if sort (funcall sort (copy-sequence all)) all))
         (exit (plist-get completion-extra-properties :exit-function)))
    (setq cf-offered (mapcar #'substring-no-properties sorted)
          cf-items (mapcar (lambda (c) (get-text-property 0 'eglot--lsp-item c)) sorted))
    (when sorted
      (let ((choice (car sorted)))
        ;; A copy, as completion frontends insert: `completion--replace' strips the text properties of the string
        ;; it is given, and eglot's exit function finds the LSP item on its own cached copy of that string.
        (completion--replace beg end (copy-sequence choice))
        (when exit (funcall exit choice 'finished)))
      t)))

(defun cf-models-ready ()
  "How many times a server said it had loaded its model (window/logMessage)."
  (cl-count-if (lambda (m) (string-prefix-p "model ready" m)) cf-log))

(defun cf-complete-at (at timeout loads)
  "C-M-i (completion-at-point) at AT until the server offers a fill, taking the first candidate; return what was
offered and the buffer after it.  Before its model is loaded the server offers nothing: after LOADS loads, three
answers with nothing are the model's (an empty result, for the pytest side to report)."
  (let ((completion-in-region-function #'cf-pick-first)
        (started (float-time))
        (tries 0)
        (empty-after-load 0))
    (cf-wait "a completion from the server"
             (lambda ()
               (setq cf-offered nil cf-items nil tries (1+ tries))
               (let ((loaded (>= (cf-models-ready) loads)))
                 (goto-char (cf-pos at))
                 (completion-at-point)
                 (when (and loaded (not cf-offered)) (setq empty-after-load (1+ empty-after-load))))
               (or cf-offered (>= empty-after-load 3) (progn (accept-process-output nil 0.25) nil)))
             timeout)
    (list :candidates (vconcat cf-offered)
          :items (vconcat (mapcar (lambda (i) (plist-get (plist-get i :textEdit) :newText)) cf-items))
          :buffer (cf-text)
          :tries tries
          :seconds (- (float-time) started))))

(defun cf-server-text (server)
  "The server's copy of the current buffer (codefill/documentText), once eglot has sent it the changes."
  (eglot--signal-textDocument/didChange)
  (plist-get (jsonrpc-request server :codefill/documentText (list :uri (eglot--path-to-uri buffer-file-name)))
             :text))

(defun cf-restore (text)
  "Put TEXT back in the buffer (eglot sends the change)."
  (erase-buffer)
  (insert text))

(defun cf-language-ids (server)
  "The languageIds of the documents eglot opened on SERVER (from its events buffer)."
  (with-current-buffer (jsonrpc-events-buffer server)
    (save-excursion
      (goto-char (point-min))
      (let (ids)
        (while (re-search-forward ":languageId \"\\([^\"]+\\)\"" nil t) (push (match-string 1) ids))
        (nreverse ids)))))

(defun cf-shutdown (server)
  "M-x eglot-shutdown, allowing the server 10 s to answer (eglot's 1.5 s is short on a busy machine); nil, or the
error."
  (condition-case err
      (progn (eglot-shutdown server nil 10) nil)
    (error (error-message-string err))))

(defun cf-connect ()
  "M-x eglot in the current buffer; the server once eglot manages the buffer."
  (call-interactively #'eglot)
  (cf-wait "eglot to manage the buffer" #'eglot-managed-p 60)
  (eglot-current-server))

(defun cf-fill-selection (sel command)
  "Select SEL (two 0-based (LINE COL)), M-x COMMAND; the answer of workspace/executeCommand and the buffer."
  (let* ((result nil)
         (capture (lambda (orig &rest args) (setq result (apply orig args)))))
    (goto-char (cf-pos (car sel)))
    (push-mark (cf-pos (cadr sel)) t t)
    (exchange-point-and-mark)
    (let ((selected (buffer-substring-no-properties (region-beginning) (region-end))))
      (advice-add 'eglot-execute-command :around capture)
      (let ((returned
             (unwind-protect
                 (let ((last-nonmenu-event 13)) ; the last key was RET (M-x COMMAND RET), not a mouse click
                   (call-interactively command))
               (advice-remove 'eglot-execute-command capture))))
        (deactivate-mark)
        (list :selected selected :result result :buffer (cf-text)
              ;; a list of code actions (what eglot 1.9's eglot-code-action-rewrite returns instead of running one)
              :returned_titles (vconcat (and (listp returned) (consp (car-safe returned))
                                             (mapcar (lambda (a) (plist-get a :title)) returned))))))))

(defun cf-run ()
  ;; eglot: built into Emacs 29+; on Emacs 28, a package (Debian's elpa-eglot is on the load-path of a plain
  ;; `emacs'; one from package.el needs `package-initialize').
  (unless (locate-library "eglot") (package-initialize))
  ;; The README's snippet, as it is there, before eglot is loaded (it is a `with-eval-after-load').
  (load (plist-get cf-params :snippet) nil t)
  (require 'eglot)
  (cf-put :emacs emacs-version)
  (cf-put :eglot (or (ignore-errors
                       (with-temp-buffer
                         (insert-file-contents (find-library-name "eglot"))
                         (and (re-search-forward "^;; Version: \\(.+\\)$" nil t) (match-string 1))))
                     "built in"))
  (cf-put :confirm_edits (cf-bool eglot-confirm-server-initiated-edits))
  ;; What the user sees, recorded, and answered the way a user would answer.
  (advice-add 'eglot-handle-notification :before
              (lambda (_server method &rest params)
                (pcase method
                  ('window/logMessage (push (plist-get params :message) cf-log))
                  ('window/showMessage (push (plist-get params :message) cf-shown)))))
  (advice-add 'y-or-n-p :around (lambda (_orig prompt) (push prompt cf-prompts) t))
  (advice-add 'completing-read :around
              (lambda (orig prompt collection &rest args)
                (if (and (consp collection) (assoc "Fill selection" collection))
                    (progn (push (format "%s %S" prompt (mapcar #'car collection)) cf-prompts)
                           "Fill selection")
                  (apply orig prompt collection args))))
  (transient-mark-mode 1)
  (find-file (plist-get cf-params :file))
  (unless (derived-mode-p 'python-mode) (error "Not in python-mode: %s" major-mode))
  (let ((original (cf-text))
        (started (float-time))
        (server (cf-connect)))
    (cf-put :connect_seconds (- (float-time) started))
    (cf-put :command (vconcat (process-command (jsonrpc--process server))))
    (cf-put :server_name (plist-get (eglot--server-info server) :name))
    (cf-put :language_id (eglot--language-id server))
    (cf-put :init_options (eglot-initialization-options server))

    ;; a. C-M-i at the hole: the first candidate is inserted
    (cf-put :a (cf-complete-at (plist-get cf-params :complete) (plist-get cf-params :ready_timeout) 1))
    (cf-put :a_server_text (cf-server-text server))
    (cf-restore original)

    ;; b. select, M-x eglot-code-actions, pick "Fill selection"; eglot applies the server's workspace/applyEdit
    ;; (asking first, by default); then M-x eglot-code-action-rewrite (which in eglot 1.9 asks the server for the
    ;; actions and runs none of them)
    (let ((sel (plist-get cf-params :select)))
      (cf-put :b (append (cf-fill-selection sel #'eglot-code-actions) (list :server_text (cf-server-text server))))
      (cf-restore original)
      (cf-put :b_prompts (length cf-prompts))
      (cf-put :b2 (cf-fill-selection sel #'eglot-code-action-rewrite))
      (cf-put :b2_prompts (- (length cf-prompts) (plist-get cf-results :b_prompts)))
      (cf-restore original))

    ;; c. the settings form of the README, then M-x eglot-signal-didChangeConfiguration: a fill at a second hole
    ;; (not asked before) is made with the new `steps', by the model already loaded
    (let ((before (cf-models-ready)))
      (cf-put :c_models_before before)
      (eval (car (read-from-string (plist-get cf-params :settings_form))) t)
      (cf-put :c_sent (eglot--workspace-configuration-plist server))
      (call-interactively #'eglot-signal-didChangeConfiguration)
      (cf-put :c (cf-complete-at (plist-get cf-params :complete2) (plist-get cf-params :ready_timeout) before))
      (accept-process-output nil 0.5)  ; a reload, were there one, would have logged by now
      (cf-put :c_models_after (cf-models-ready)))
    (set-buffer-modified-p nil)

    ;; d. a C file in the same project: a server of its own, which gets the file as `c'
    (find-file (plist-get cf-params :c_file))
    (let ((c-server (cf-connect)))
      (cf-put :d (list :language_id (eglot--language-id c-server)
                       :same_server (cf-bool (eq c-server server))
                       :opened_as (vconcat (cf-language-ids c-server))))
      (cf-put :d_shutdown_error (cf-shutdown c-server)))
    (cf-put :opened_as (vconcat (cf-language-ids server)))
    (cf-put :shutdown_error (cf-shutdown server))
    (cf-put :server_alive (cf-bool (process-live-p (jsonrpc--process server))))))

(condition-case err
    (progn (cf-run) (cf-finish 0))
  (error (cf-put :error (error-message-string err)) (cf-finish 1)))

;;; codefill-e2e.el ends here
